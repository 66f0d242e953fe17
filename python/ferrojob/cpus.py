"""How many CPUs this process may use, and what joblib's ``n_jobs`` means here."""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from .errors import InvalidParameterError, compose_message

__all__ = ["check_n_jobs", "cpu_count", "normalize_n_jobs", "resolve_n_jobs"]


def _invalid(summary: str, *help_lines: str) -> InvalidParameterError:
    return InvalidParameterError(compose_message(summary, *help_lines), code="FJ201")


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


def normalize_n_jobs(n_jobs: Any) -> int | None:
    """``n_jobs`` as an int (or None), converted like joblib converts it: ``2.0`` and ``"2"``
    mean 2. ``InvalidParameterError`` (a ``ValueError``) for a value that means nothing: a bool,
    a fraction (joblib would silently truncate 1.5 to 1), text that is no integer, or 0."""
    if n_jobs is None:
        return None
    value: int | None = None
    if isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool):
        value = int(n_jobs)
    elif isinstance(n_jobs, float) and n_jobs.is_integer():
        value = int(n_jobs)
    elif isinstance(n_jobs, str):
        try:
            value = int(n_jobs.strip())
        except ValueError:
            value = None
    if value is None:
        raise _invalid(
            f"n_jobs must be an integer or None, got {n_jobs!r} ({type(n_jobs).__name__}).",
            "n_jobs=2 for two workers, n_jobs=-1 for all CPUs, n_jobs=None for the default",
        )
    if value == 0:
        raise _invalid(
            "n_jobs == 0 in Parallel has no meaning: it is not a number of workers.",
            "use n_jobs=1 to run in this process, n_jobs=2 (or more) for that many workers,",
            "n_jobs=-1 for all CPUs, or n_jobs=None for the default (1, or parallel_config's)",
        )
    return value


def check_n_jobs(n_jobs: Any) -> None:
    """Raise ``InvalidParameterError`` (a ``ValueError``) for an ``n_jobs`` that means nothing."""
    normalize_n_jobs(n_jobs)


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Turn joblib's n_jobs convention into a worker count (None → 1, -1 → all CPUs, ...)."""
    value = normalize_n_jobs(n_jobs)
    if value is None:
        return 1
    if value < 0:
        return max(cpu_count() + 1 + value, 1)
    return value
