"""What a backend is: something that opens a session which runs batches of calls.

The driver in ``ferrojob.parallel`` owns everything common to all backends — reading the user's
iterable, batch sizes, pre-dispatch, ordering, progress and aborting on errors (the bookkeeping
lives in the Rust ``Scheduler``) — so a backend only has to run batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .._runlog import CallRecorder
from .._tasks import Batch


class Completion(NamedTuple):
    """A finished batch: its id, its results in order, and the worker time it took (seconds)."""

    batch_id: int
    results: list
    elapsed: float


class CallOptions(NamedTuple):
    """Settings of a call that backends may honour."""

    timeout: float | None = None
    inner_max_num_threads: int | None = None
    #: Buffers of at least this many bytes go through shared memory (None: never).
    max_nbytes: int | None = None
    #: How workers map shared arguments: "r", "r+", "w+" or "c".
    mmap_mode: str = "r"
    backend_params: Mapping[str, Any] = MappingProxyType({})
    #: A task that raises (or times out, or whose worker dies) puts its exception in its result
    #: slot instead of failing the call.
    return_exceptions: bool = False
    #: Called as ``initializer(*initargs)`` once in each worker process before its first task.
    initializer: Callable[..., Any] | None = None
    initargs: tuple = ()
    #: A worker is replaced after this many tasks (process pool).
    max_tasks_per_worker: int | None = None
    #: A worker whose resident memory exceeds this many bytes after a batch is replaced.
    max_worker_memory: int | None = None
    #: The call's ``verbose`` (joblib's backends print through it).
    verbose: int = 0


class Session(ABC):
    """A backend at work: it accepts batches and hands back completions.

    ``wait`` raises the error of a failed batch (the task's own exception, or a ferrojob error for
    a crash or a timeout); after that the driver calls ``abort``.
    """

    n_workers: int = 1
    #: Where the session records the batches it runs (set for a call, or an executor's life;
    #: None: nowhere). See ``ferrojob._runlog``.
    recorder: CallRecorder | None = None

    def begin(self) -> None:
        """Called at the start of every call made in this session (e.g. to replace dead workers)."""

    @abstractmethod
    def submit(self, batch_id: int, batch: Batch) -> None: ...

    @abstractmethod
    def wait(self) -> Completion: ...

    @abstractmethod
    def abort(self, everything: bool = False) -> None:
        """Drop queued batches and stop running ones; later completions of them are ignored.

        ``everything`` (on Ctrl-C): stop every worker of the session, busy or not.
        """

    def flush_record(self) -> None:
        """Add to ``recorder`` what the session knows beyond its batches (worker events)."""

    def close(self) -> None:
        """Release what the session holds; called once, when the call or the ``with`` block ends."""


class Backend(ABC):
    """A way to run batches: in this process, in threads, in worker processes, on a cluster."""

    #: The name ``Parallel(backend=...)`` selects it by.
    name: str = ""
    #: Tasks can share (and mutate) the caller's objects, as required by ``require="sharedmem"``.
    supports_sharedmem: bool = False
    #: ``inner_max_num_threads`` caps BLAS/OpenMP threads in its workers (processes of their own).
    supports_inner_max_num_threads: bool = False
    #: Tasks run one after another in the calling thread (no session, no pickling).
    in_process: bool = False
    #: What ``n_jobs=None`` means for this backend (-1, "every worker", for clusters).
    default_n_jobs: int = 1

    def effective_n_jobs(self, n_jobs: int) -> int:
        """How many workers this backend will use for a positive ``n_jobs``."""
        return n_jobs

    @abstractmethod
    def open(self, n_jobs: int, options: CallOptions) -> Session: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
