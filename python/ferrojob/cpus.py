"""How many CPUs this process may use, and what joblib's ``n_jobs`` means here."""

from __future__ import annotations

import math
import os

from ._settings import check_n_jobs

__all__ = ["cpu_count", "resolve_n_jobs"]


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


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Turn joblib's n_jobs convention into a worker count (None → 1, -1 → all CPUs, ...)."""
    value = check_n_jobs(n_jobs)
    if value is None:
        return 1
    if value < 0:
        return max(cpu_count() + 1 + value, 1)
    return value
