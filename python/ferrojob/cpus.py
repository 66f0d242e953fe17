"""How many CPUs this process may use, and what joblib's ``n_jobs`` means here."""

from __future__ import annotations

import math
import numbers
import os
import sys
from typing import Any

from .errors import invalid_parameter as invalid

#: The largest worker count taken (an unsigned 63-bit integer everywhere).
_MAX_WORKERS = sys.maxsize

__all__ = ["check_n_jobs", "cpu_count", "resolve_n_jobs"]


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), if any."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as file:
            quota, period = file.read().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process can use: its affinity mask, bounded by a cgroup quota.

    ``only_physical_cores`` is accepted for joblib compatibility; logical CPUs are counted.

    Example::

        >>> from ferrojob import cpu_count
        >>> cpu_count() >= 1
        True
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def check_n_jobs(n_jobs: Any) -> int | None:
    """``n_jobs`` as an int (or None), converted as joblib converts it: ``2.0``, ``2.7`` and
    ``"2"`` mean 2 (truncated, so ``cpu_count() * 0.75`` works); a fraction below 1 is 0, which
    means nothing. Bools and text that is no number are refused."""
    if n_jobs is None:
        return None
    value: int | None = None
    if isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool):
        value = int(n_jobs)
    elif isinstance(n_jobs, float) and math.isfinite(n_jobs):
        value = int(n_jobs)
    elif isinstance(n_jobs, str):
        try:
            value = int(n_jobs.strip())
        except ValueError:
            value = None
    if value is None:
        raise invalid(
            f"n_jobs could not be converted to int: it must be an integer or None, got {n_jobs!r} "
            f"({type(n_jobs).__name__}).",
            "n_jobs=2 for two workers, n_jobs=-1 for all CPUs, n_jobs=None for the default",
        )
    if value == 0:
        raise invalid(
            "n_jobs == 0 in Parallel has no meaning: it is not a number of workers.",
            "use n_jobs=1 to run in this process, n_jobs=2 (or more) for that many workers,",
            "n_jobs=-1 for all CPUs, or n_jobs=None for the default (1, or parallel_config's)",
        )
    if abs(value) > _MAX_WORKERS:
        raise invalid(f"n_jobs={n_jobs!r} is more workers than a machine can run.", "use n_jobs=-1 for all CPUs")
    return value


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Turn joblib's n_jobs convention into a worker count (None → 1, -1 → all CPUs, ...)."""
    value = check_n_jobs(n_jobs)
    if value is None:
        return 1
    if value < 0:
        return max(cpu_count() + 1 + value, 1)
    return value
