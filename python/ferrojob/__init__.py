"""ferrojob: joblib's API on a Rust engine.

Example::

    >>> from ferrojob import Parallel, delayed
    >>> Parallel(n_jobs=2)(delayed(abs)(-x) for x in range(4))
    [0, 1, 2, 3]
"""

import importlib
import sys
from typing import TYPE_CHECKING, Any

if sys.platform == "win32":
    # Before the native module: its engine is POSIX-only (fork/exec, fd passing, mmap).
    raise ImportError(
        "ferrojob does not support Windows yet: its engine needs a POSIX system (Linux, or macOS "
        "on the portable path).\n  help: use joblib, whose API ferrojob follows: "
        "pip install joblib, then `from joblib import Parallel, delayed`"
    )

from . import _core, _misuse, _tasks
from ._pickling import wrap_non_picklable_objects
from ._progress import ProgressUpdate
from .backends import register_parallel_backend
from .config import parallel_backend, parallel_config
from .cpus import cpu_count
from .errors import (
    DamagedFileError,
    FerrojobError,
    InvalidParameterError,
    NoClusterError,
    NotADumpFileError,
    ParallelUsageError,
    RefusedContentError,
    TaskCancelledError,
    UnknownBackendError,
    UnpicklableError,
    WorkerCrashedError,
    WorkerStartError,
)
from .parallel import Parallel, delayed, effective_n_jobs
from .report import RunReport

# The bindings raise these classes and name functions this way: handed over once, here.
_core.install(
    function_name=_tasks.function_name,
    not_callable=_misuse.not_callable,
    damaged_file=DamagedFileError,
    invalid_parameter=InvalidParameterError,
    not_a_dump_file=NotADumpFileError,
)

if TYPE_CHECKING:
    from .errors import TaskTimeoutError
    from .executor import Executor
    from .hashing import hash
    from .memory import MemorizedResult, Memory, expires_after
    from .persistence import dump, load

# Persistence is imported on first use, so that `import ferrojob` stays light for Parallel users.
_LAZY = {
    "TaskTimeoutError": "errors",
    "Executor": "executor",
    "hash": "hashing",
    "Memory": "memory",
    "MemorizedResult": "memory",
    "expires_after": "memory",
    "dump": "persistence",
    "load": "persistence",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrojob' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "DamagedFileError",
    "Executor",
    "FerrojobError",
    "InvalidParameterError",
    "MemorizedResult",
    "Memory",
    "NoClusterError",
    "NotADumpFileError",
    "Parallel",
    "ParallelUsageError",
    "ProgressUpdate",
    "RefusedContentError",
    "RunReport",
    "TaskCancelledError",
    "TaskTimeoutError",
    "UnknownBackendError",
    "UnpicklableError",
    "WorkerCrashedError",
    "WorkerStartError",
    "cpu_count",
    "delayed",
    "dump",
    "effective_n_jobs",
    "expires_after",
    "hash",
    "load",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
    "wrap_non_picklable_objects",
]

# Last: with joblib already imported, installing the hook registers ferrojob's joblib backend at
# once, and under the import swap replaces joblib's public names, reading __all__ and the lazy
# names above (installed earlier, a process that imported joblib first found them missing).
from . import _joblib_hook  # noqa: E402

_joblib_hook.install()
