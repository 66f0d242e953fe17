"""The process backend: batches run in warm worker processes managed by the Rust pool.

One pool per interpreter is kept warm between calls (its workers retire after
``IDLE_TIMEOUT`` seconds without work). A call that finds it busy — another thread is using it —
gets a private pool for its duration.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import _failures, _pickling
from .._core import Completion as EngineCompletion
from .._core import CompletionKind, ProcessPool
from .._sharedmem import ArgumentStore
from .._tasks import Batch
from .._worker import CHANNEL_LOST_EXIT
from ..cpus import cpu_count
from ..errors import (
    RemoteTraceback,
    TaskTimeoutError,
    UnpicklableError,
    WorkerCrashedError,
    compose_message,
)
from .base import Backend, CallOptions, Completion, Session

#: Seconds without work after which warm workers exit.
IDLE_TIMEOUT = 300.0
#: Environment variable set in every worker (nested calls there run sequentially).
WORKER_MARK = "FERROJOB_WORKER"
_THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_JOB_IDS = itertools.count()


def in_worker() -> bool:
    """Whether this process is a ferrojob worker."""
    return os.environ.get(WORKER_MARK) == "1"


class ProcessBackend(Backend):
    """ferrojob's engine: Rust-managed worker processes (also answers to "loky" and
    "multiprocessing")."""

    name = "loky"

    def effective_n_jobs(self, n_jobs: int) -> int:
        # Nested inside a worker, run sequentially instead of multiplying processes.
        return 1 if in_worker() else n_jobs

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        return ProcessSession(n_jobs, options)


def worker_environment(n_workers: int, inner_max_num_threads: int | None) -> dict[str, str]:
    """The parent's environment, plus BLAS/OpenMP thread caps so workers don't oversubscribe."""
    env = dict(os.environ)
    threads = inner_max_num_threads or max(cpu_count() // max(n_workers, 1), 1)
    for var in _THREAD_LIMIT_VARS:
        if inner_max_num_threads is not None or var not in env:
            env[var] = str(threads)
    env[WORKER_MARK] = "1"
    return env


def _worker_command() -> tuple[str, list[str]]:
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bootstrap = (
        f"import sys; sys.path.insert(0, {package_parent!r}); "
        "from ferrojob._worker import main; main()"
    )
    return sys.executable, ["-c", bootstrap]


def _init_payload() -> bytes:
    return pickle.dumps({"sys_path": list(sys.path), "cwd": os.getcwd()})


class _SharedPool:
    """The interpreter's warm pool, lent to one call (or ``with Parallel``) at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ProcessPool | None = None
        self.key: tuple | None = None

    def acquire(self, n_workers: int, env: dict[str, str]) -> tuple[ProcessPool, Callable[[], None]]:
        program, args = _worker_command()
        if not self.lock.acquire(blocking=False):
            pool = ProcessPool(program, args, list(env.items()), _init_payload(), n_workers)
            return pool, pool.shutdown
        try:
            key = (program, tuple(sorted(env.items())))
            if self.pool is None or self.key != key:
                self.shutdown()
                self.pool = ProcessPool(
                    program, args, list(env.items()), _init_payload(), n_workers, IDLE_TIMEOUT
                )
                self.key = key
            else:
                self.pool.ensure_workers(n_workers)
        except BaseException:
            self.lock.release()
            raise
        return self.pool, self.lock.release

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def forget_after_fork(self) -> None:
        # The workers belong to the parent; the engine leaves them alone in a child.
        self.lock = threading.Lock()
        self.pool = None
        self.key = None


_SHARED = _SharedPool()
atexit.register(_SHARED.shutdown)
os.register_at_fork(after_in_child=_SHARED.forget_after_fork)


class ProcessSession(Session):
    """A call (or a ``with Parallel`` block) on the warm pool. ``extra_env``: variables set in the
    workers on top of ``worker_environment`` (the joblib backend passes joblib's)."""

    def __init__(self, n_workers: int, options: CallOptions, extra_env: dict[str, str] | None = None) -> None:
        self.n_workers = n_workers
        self._timeout = options.timeout
        self._max_nbytes = options.max_nbytes
        self._mmap_mode = options.mmap_mode
        env = {**worker_environment(n_workers, options.inner_max_num_threads), **(extra_env or {})}
        self._pool, self._release = _SHARED.acquire(n_workers, env)
        self._arguments = ArgumentStore()
        # job -> (batch id, batch)
        self._jobs: dict[int, tuple[int, Batch]] = {}

    def begin(self) -> None:
        if self._pool.n_workers != self.n_workers:
            self._pool.ensure_workers(self.n_workers)

    def submit(self, batch_id: int, batch: Batch) -> None:
        try:
            body, buffers = _pickling.dumps_with_buffers(
                (self._max_nbytes, batch.columns()), self._max_nbytes
            )
        except Exception as error:
            raise _explain_unpicklable_batch(batch, error) from error
        placements = [self._arguments.place(buffer) for buffer in buffers]
        job = next(_JOB_IDS)
        self._jobs[job] = (batch_id, batch)
        try:
            self._pool.submit(job, body, self._arguments.arena, placements, self._mmap_mode)
        except BaseException:
            self._jobs.pop(job)
            raise

    def wait(self) -> Completion:
        while True:
            outcome = self.resolve(self.poll(None))
            if outcome is None:
                continue
            batch_id, results, elapsed, error = outcome
            if error is not None:
                raise error
            return Completion(batch_id, results, elapsed)

    def poll(self, timeout: float | None) -> EngineCompletion | None:
        """The next engine completion, or None after ``timeout`` seconds (thread-safe)."""
        return self._pool.wait(timeout, self._timeout)

    def resolve(self, completion: EngineCompletion | None) -> tuple[int, Any, float, BaseException | None] | None:
        """``(batch id, results, elapsed, error)`` for a completion of this session's jobs; None
        for nothing, or a job of an aborted call."""
        if completion is None:
            return None
        entry = self._jobs.pop(completion.job, None)
        if entry is None:
            return None
        batch_id, batch = entry
        if completion.kind != CompletionKind.Done:
            return batch_id, None, completion.elapsed, _job_error(completion, batch, self._timeout)
        try:
            return batch_id, _load_results(completion, batch), completion.elapsed, None
        except Exception as error:
            return batch_id, None, completion.elapsed, error

    def abort(self, everything: bool = False) -> None:
        if everything:
            self._pool.terminate()
        elif self._jobs:
            self._pool.cancel()
        self._jobs.clear()

    def close(self) -> None:
        self.abort()
        self._arguments = ArgumentStore()  # closes this session's shared memory now
        self._release()


def _explain_unpicklable_batch(batch: Batch, error: Exception) -> Exception:
    for offset, (function, args, kwargs) in enumerate(batch.calls):
        explained = _pickling.unpicklable_argument(function, args, kwargs, batch.describe(offset))
        if explained is not None:
            return explained
    return error


def _load_results(completion: EngineCompletion, batch: Batch) -> list[Any]:
    assert completion.payload is not None, "a done job always has a payload"
    try:
        return pickle.loads(completion.payload, buffers=completion.buffers)
    except Exception as error:
        raise UnpicklableError(
            compose_message(
                f"the results of tasks {batch.start}..{batch.start + len(batch) - 1} came back "
                f"from the worker but cannot be loaded here: {type(error).__name__}: {error}",
                "a result refers to something this process cannot import;",
                "return plain data, or make the module importable in the parent",
            ),
            code="FJ102",
        ) from error


def _job_error(completion: EngineCompletion, batch: Batch, timeout: float | None) -> BaseException:
    kind = completion.kind
    if kind == CompletionKind.Failed:
        return _task_failure(completion.payload, batch)
    running = completion.tasks_started - 1
    if kind == CompletionKind.Timeout:
        return TaskTimeoutError(
            compose_message(
                f"{batch.describe(running)} ran longer than timeout={timeout:g} s; "
                f"its worker (pid {completion.pid}) was stopped.",
                "the other tasks of this call were cancelled; raise Parallel(timeout=...)",
                "or split the work into shorter tasks",
            ),
            code="FJ302",
        )
    if kind == CompletionKind.Exited and completion.code == CHANNEL_LOST_EXIT:
        how = "lost its connection to the parent"
        hint = (
            "a task closed or replaced file descriptor 3, the worker's socket "
            "(os.closerange, os.dup2 onto it)"
        )
    elif kind == CompletionKind.Exited:
        how = f"exited with code {completion.code}"
        hint = "os._exit() inside a task ends its worker process"
    elif kind == CompletionKind.Protocol:
        how = f"broke ferrojob's worker protocol ({completion.reason}) and was killed"
        hint = "a task wrote to file descriptor 3, the worker's socket, or a forked child did"
    elif kind == CompletionKind.Signaled:
        how = f"was killed by signal {_signal_name(completion.code)}"
        hint = (
            "SIGSEGV/SIGBUS usually come from a C extension, SIGKILL from the out-of-memory killer"
        )
    else:
        how = "disappeared"
        hint = "another part of the program may have reaped it (os.wait)"
    where = (
        batch.describe(running)
        if completion.tasks_started > 0
        else f"tasks {batch.start}..{batch.start + len(batch) - 1} (before the first one started)"
    )
    return WorkerCrashedError(
        compose_message(
            f"worker process {completion.pid} {how} while running {where}.",
            hint + ";",
            "the pool replaced the worker and cancelled the other tasks of this call",
        ),
        code="FJ301",
    )


def _tasks_of(batch: Batch) -> str:
    """``task 3: f(3)`` for a batch of one, else ``tasks 3..9``."""
    if len(batch) == 1:
        return batch.describe(0)
    return f"tasks {batch.start}..{batch.start + len(batch) - 1}"


def _signal_name(number: int | None) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(number)


def _task_failure(payload: bytes | None, batch: Batch) -> BaseException:
    """Rebuild the error a worker reported (see ``ferrojob._failures``)."""
    if not payload:
        return RuntimeError("a ferrojob worker failed without a report (an internal error)")
    report = _failures.loads(payload)
    if isinstance(report, _failures.ResultUnpicklable):
        return _pickling.unpicklable_result(report.type_name, batch.describe(report.offset), report.reason)
    if isinstance(report, _failures.ArgumentsUnloadable):
        error = UnpicklableError(
            compose_message(
                f"the arguments of {_tasks_of(batch)} could not be loaded in the worker process: "
                f"{report.type_name}: {report.message}",
                "an argument unpickles differently in a fresh process (its module cannot be",
                "imported there, or its __reduce__/__setstate__ failed); make its module",
                "importable, or build the object inside the task",
            ),
            code="FJ101",
        )
        error.__cause__ = RemoteTraceback(report.traceback)
        return error
    exception = _rebuild_exception(report.rebuild, report.data)
    if exception is None:
        exception = RuntimeError(f"{report.type_name}: {report.message}")
    header = f"Traceback of {batch.describe(report.offset)} in its worker process:\n"
    exception.__cause__ = RemoteTraceback(header + report.traceback)
    return exception


def _rebuild_exception(how: str | None, data: bytes | None) -> BaseException | None:
    """The worker's exception object (see ``ferrojob._worker._exception_payload``), if possible."""
    try:
        if how == "pickle":
            exception = pickle.loads(data)  # type: ignore[arg-type]
        elif how == "parts":
            cls, args, state = pickle.loads(data)  # type: ignore[arg-type]
            exception = cls.__new__(cls, *args)
            exception.args = args
            exception.__dict__.update(state)
        else:
            return None
    except Exception:
        return None
    return exception if isinstance(exception, BaseException) else None
