"""ferrojob: joblib's API on a Rust engine.

Example::

    >>> from ferrojob import Parallel, delayed
    >>> Parallel(n_jobs=2)(delayed(abs)(-x) for x in range(4))
    [0, 1, 2, 3]
"""

from .backends import register_parallel_backend
from .config import parallel_backend, parallel_config
from .cpus import cpu_count
from .errors import (
    FerrojobError,
    InvalidParameterError,
    ParallelUsageError,
    TaskTimeoutError,
    UnknownBackendError,
    UnpicklableError,
    WorkerCrashedError,
)
from .parallel import Parallel, delayed, effective_n_jobs

__version__ = "0.1.0"

__all__ = [
    "FerrojobError",
    "InvalidParameterError",
    "Parallel",
    "ParallelUsageError",
    "TaskTimeoutError",
    "UnknownBackendError",
    "UnpicklableError",
    "WorkerCrashedError",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
]
