"""The process backend: batches run in warm worker processes managed by the Rust pool.

One pool per interpreter is kept warm between calls (its workers retire after
``IDLE_TIMEOUT`` seconds without work). A call that finds it busy — another thread is using it —
gets a private pool for its duration.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import pickle
import sys
import threading
from collections.abc import Callable
from time import monotonic, perf_counter
from typing import Any, NamedTuple

from .. import _failures, _pickling, _reports
from .._core import Arena, CompletionKind, ProcessPool
from .._core import Completion as EngineCompletion
from .._runlog import WorkerEvent
from .._shared_objects import SharedObjects
from .._sharedmem import ArgumentStore
from .._tasks import Batch, CallSettings, JobResults
from ..cpus import cpu_count
from ..errors import (
    RemoteTraceback,
    UnpicklableError,
    compose_message,
)
from .base import Backend, CallOptions, Completion, Session
from .pieces import Assemblies, Piece

#: Seconds without work after which warm workers exit.
IDLE_TIMEOUT = 300.0
#: Environment variable a worker starts with; it takes it out of its environment at once
#: (``adopt_worker_mark``), so that programs its tasks start are not taken for workers.
WORKER_MARK = "FERROJOB_WORKER"
#: Whether this process is a ferrojob worker (nested calls there run sequentially).
_IS_WORKER = False
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
    return _IS_WORKER


def adopt_worker_mark() -> None:
    """Called once by a worker as it starts: it is one if the pool marked its environment; the
    mark leaves the environment, so a program a task starts (``subprocess.run([python,
    script])``) runs its own ``Parallel`` calls in parallel, as it would anywhere else."""
    global _IS_WORKER
    _IS_WORKER = os.environ.pop(WORKER_MARK, None) == "1"


class ProcessBackend(Backend):
    """ferrojob's engine: Rust-managed worker processes (also answers to "loky" and
    "multiprocessing")."""

    name = "loky"
    supports_inner_max_num_threads = True

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


def _pool_key_environment(env: dict[str, str], extra_env: dict[str, str]) -> tuple:
    """The part of a pool's environment that makes its workers different: the variables set for
    the workers (thread caps, ``extra_env``) and ferrojob's own ``FERROJOB_*``. Like loky, a warm
    pool is not restarted for any other change of ``os.environ`` (pytest sets
    ``PYTEST_CURRENT_TEST`` before every test): workers keep the environment they started with."""
    ours = {*_THREAD_LIMIT_VARS, WORKER_MARK, *extra_env}
    return tuple(sorted((name, value) for name, value in env.items() if name in ours or name.startswith("FERROJOB_")))


def _worker_command() -> tuple[str, list[str]]:
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bootstrap = f"import sys; sys.path.insert(0, {package_parent!r}); from ferrojob._worker import main; main()"
    return sys.executable, ["-c", bootstrap]


def _init_payload(initializer: Callable[..., Any] | None, initargs: tuple) -> bytes:
    """What every worker of a pool is set up with: the parent's sys.path and the call's
    initializer (pickled with cloudpickle: lambdas and closures work). The working directory
    travels with each job instead, so that a ``chdir`` does not cost a new pool."""
    settings: dict[str, Any] = {"sys_path": list(sys.path), "initializer": None}
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None:
        # Manager() proxies passed to tasks authenticate with the parent's key, as under loky.
        settings["authkey"] = bytes(multiprocessing.current_process().authkey)
    if initializer is not None:
        settings["initializer"] = _pickling.dumps((initializer, tuple(initargs)))
    return pickle.dumps(settings)


def private_pool(n_workers: int, env: dict[str, str], init: bytes, idle_timeout: float | None = None) -> ProcessPool:
    """A pool of one owner's own, whose workers live until it is shut down (or, with
    ``idle_timeout``, until they have been idle that long)."""
    program, args = _worker_command()
    return ProcessPool(program, args, list(env.items()), init, n_workers, idle_timeout)


class _SharedPool:
    """The interpreter's warm pool, lent to one call (or ``with Parallel``) at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ProcessPool | None = None
        self.key: tuple | None = None

    def acquire(
        self, n_workers: int, env: dict[str, str], init: bytes, key_env: tuple
    ) -> tuple[ProcessPool, Callable[[], None]]:
        """The warm pool if it is free (restarted when ``key_env`` or ``init`` changed), else a
        private one for this call."""
        if not self.lock.acquire(blocking=False):
            pool = private_pool(n_workers, env, init)
            return pool, pool.shutdown
        try:
            key = (_worker_command(), key_env, init)
            if self.pool is not None and not self.pool.owned_here:
                # A forked child: the workers are its parent's (the engine leaves them alone).
                self.pool, self.key = None, None
            if self.pool is None or self.key != key:
                self.shutdown()
                self.pool = private_pool(n_workers, env, init, IDLE_TIMEOUT)
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

    def renew_lock_after_fork(self) -> None:
        # A thread of the parent may have held it at the fork: the child's is free. Whether the
        # pool is the child's is the engine's answer (``owned_here``), asked in ``acquire``.
        self.lock = threading.Lock()


_SHARED = _SharedPool()
atexit.register(_SHARED.shutdown)
os.register_at_fork(after_in_child=_SHARED.renew_lock_after_fork)


class Resolved(NamedTuple):
    """A batch settled by ``ProcessSession.resolve``: its results in order (failed tasks' slots
    hold what ``SessionPolicy.mark_failed`` made of their errors), or the error that fails it."""

    batch_id: int
    results: Any
    elapsed: float
    error: BaseException | None
    #: Whether a slot holds a failed task's error (``return_exceptions``, map chunks).
    has_failures: bool = False


class SessionPolicy(NamedTuple):
    """How a session treats its batches: as one ``Parallel`` call's (the default: a lost batch
    ends the call; the interpreter's warm pool) or as an executor's."""

    #: A lost batch (crash, timeout, kill) fails alone: its worker is replaced and the other
    #: batches go on.
    independent: bool = False
    #: Workers of the session's own, alive until it closes (else the warm pool, when free).
    private_pool: bool = False
    #: What a failed task leaves in its result slot when its batch collects errors.
    mark_failed: Callable[[BaseException], Any] | None = None
    #: What a user raises to give tasks more time (named in TaskTimeoutError).
    timeout_setting: str = "Parallel(timeout=...)"


class ProcessSession(Session):
    """A call (or a ``with Parallel`` block) on the warm pool. ``extra_env``: variables set in the
    workers on top of ``worker_environment`` (the joblib backend passes joblib's).

    Not thread-safe: one thread drives it (``ferrojob.Executor`` serialises its threads)."""

    def __init__(
        self,
        n_workers: int,
        options: CallOptions,
        extra_env: dict[str, str] | None = None,
        policy: SessionPolicy = SessionPolicy(),  # noqa: B008 - immutable
    ) -> None:
        self.n_workers = n_workers
        self.policy = policy
        #: Workers could not be replaced (the system is out of processes): tried again later.
        self.short_of_workers = False
        self._timeout = options.timeout
        self._max_nbytes = options.max_nbytes
        self._mmap_mode = options.mmap_mode
        self._collect = options.return_exceptions
        self._limits = (options.timeout, options.max_tasks_per_worker, options.max_worker_memory)
        env = {**worker_environment(n_workers, options.inner_max_num_threads), **(extra_env or {})}
        self._threads_per_worker = _threads_per_worker(env)
        init = _init_payload(options.initializer, options.initargs)
        self._pool, self._release = self._acquire_pool(
            n_workers, env, init, _pool_key_environment(env, extra_env or {})
        )
        self._arguments = ArgumentStore(self._pool.new_arena())
        self._shared = SharedObjects(options.max_nbytes)
        self._jobs: dict[int, Piece] = {}
        # per job, while a recorder listens: when it was submitted, the seconds pickling it, its
        # bytes pickled, in shared memory, copied there, and copied again (see ``_record``)
        self._sent: dict[int, tuple[float, float, int, int, int, int]] = {}
        self._placed: set[tuple[int, int, int]] = set()  # buffers placed in this call (identities)
        # batches being put back together from pieces run again (return_exceptions)
        self._assemblies = Assemblies()
        self._start_failures = 0
        self._with_failures: set[int] = set()  # batches a failed task's mark lies in

    def new_call(self) -> None:
        """Start a call's arguments afresh: arrays placed by earlier calls (of a `with
        Parallel()` block, or earlier Executor submissions) are reused only once proven
        unchanged (its pages watched for writes, or a fingerprint), never stale; large shared objects are shared
        within one call only."""
        self._arguments.new_call()
        self._shared = SharedObjects(self._max_nbytes)
        self._placed.clear()

    def _acquire_pool(
        self, n_workers: int, env: dict[str, str], init: bytes, key_env: tuple
    ) -> tuple[ProcessPool, Callable[[], None]]:
        """The pool this session runs on, and how to give it back."""
        if self.policy.private_pool:
            pool = private_pool(n_workers, env, init)
            return pool, pool.shutdown
        return _SHARED.acquire(n_workers, env, init, key_env)

    def begin(self) -> None:
        self.new_call()
        # Tasks run where the call was made; each worker hears it once, before the call's jobs.
        self._pool.set_call(pickle.dumps(CallSettings(self._max_nbytes, os.getcwd())))
        self._pool.set_limits(*self._limits)
        if self._pool.n_workers != self.n_workers:
            self._pool.ensure_workers(self.n_workers)

    def submit(self, batch_id: int, batch: Batch, collect: bool | None = None) -> None:
        """Run ``batch``; ``collect`` (default: the call's ``return_exceptions``) leaves each
        failed task's error in its slot (see ``_mark_failed``) instead of failing the batch."""
        self._submit(Piece(batch_id, batch, self._collect if collect is None else collect))

    def _submit(self, piece: Piece) -> None:
        submitted, began = monotonic(), perf_counter()
        columns = piece.batch.columns()
        plain = self._shared.note(columns)
        try:
            body, buffers = self._shared.dumps(columns, piece.collect, plain)
        except Exception as error:
            raise _explain_unpicklable_batch(piece.batch, error) from error
        pickled = perf_counter()
        identities = [self._arguments.identity(buffer) for buffer in buffers]
        job = next(_JOB_IDS)
        self._jobs[job] = piece
        arena = self._arguments.arena
        copied = arena.bytes_written if buffers else 0
        try:
            self._pool.submit(job, body, arena, buffers, identities, self._mmap_mode, len(piece.batch))
        except BaseException:
            self._jobs.pop(job)
            raise
        if self.recorder is not None:
            shared = new = 0
            if buffers:
                copied = arena.bytes_written - copied
                for identity in identities:
                    shared += identity[2]
                    if identity not in self._placed:
                        self._placed.add(identity)
                        new += identity[2]
            # a plain tuple of _Sent's fields: this runs once per batch
            self._sent[job] = (submitted, pickled - began, len(body), shared, copied, max(copied - new, 0))

    def wait(self) -> Completion:
        while True:
            resolved = self.resolve(self.poll(None))
            if resolved is None:
                continue
            if resolved.error is not None:
                raise resolved.error
            return Completion(resolved.batch_id, resolved.results, resolved.elapsed)

    def job_of(self, batch_id: int) -> int | None:
        """The job running ``batch_id``; None if it has none (done) or is split in several."""
        jobs = self._jobs_of(batch_id)
        return jobs[0] if len(jobs) == 1 else None

    def _jobs_of(self, batch_id: int) -> list[int]:
        return [job for job, piece in self._jobs.items() if piece.batch_id == batch_id]

    def wait_for_job(self, job: int, timeout: float | None) -> EngineCompletion | None:
        """``job``'s completion, waited for in this thread instead of going to ``poll`` (pass it
        to ``resolve``, the session's lock held). None if it is not queued or running, another
        thread waits for it, or after ``timeout`` seconds; its completion then goes to ``poll``."""
        return self._pool.wait_for_job(job, timeout)

    def poll(self, timeout: float | None) -> EngineCompletion | None:
        """The next engine completion, or None after ``timeout`` seconds or once ``wake`` is
        called (thread-safe)."""
        return self._pool.wait(timeout)

    def wake(self) -> None:
        """Make a thread blocked in ``poll`` return None now."""
        self._pool.wake()

    def resolve(self, completion: EngineCompletion | None) -> Resolved | None:
        """The batch a completion of this session's jobs settles; None for nothing, a job of an
        aborted call, or a batch still being put back together. With an independent policy, a
        lost job's worker is replaced here."""
        if completion is None:
            return None
        resolved = self._resolve(completion)
        if self.policy.independent and completion.kind not in (CompletionKind.Done, CompletionKind.Failed):
            self.replace_workers()
        return resolved

    def _resolve(self, completion: EngineCompletion) -> Resolved | None:
        piece = self._jobs.pop(completion.job, None)
        sent = self._sent.pop(completion.job, None)
        if piece is None:
            return None
        if completion.kind == CompletionKind.Done:
            self._start_failures = 0
            unpickling = perf_counter()
            try:
                results, failed, timing = _load_results(completion, piece.batch)
            except Exception as error:
                return Resolved(piece.batch_id, None, completion.elapsed, error)
            if sent is not None:
                self._record(piece, sent, completion, "done", timing, perf_counter() - unpickling)
            if failed:
                results = _failures.settle(
                    results, piece.batch.describe, functools.partial(self._mark_failed, piece), failed
                )
            if len(results) < len(piece.batch):
                # The worker stopped early, over max_worker_memory (it is being replaced): the
                # rest of the batch runs on a fresh one.
                self._assemblies.expect(piece)
                self.replace_workers()
                self._submit(piece.part(len(results), len(piece.batch)))
                return self._fill(piece.part(0, len(results)), results, completion.elapsed)
            return self._fill(piece, results, completion.elapsed)
        if sent is not None:
            self._record(piece, sent, completion, _OUTCOMES.get(int(completion.kind), "crashed"))
        if completion.kind == CompletionKind.Failed:
            return Resolved(piece.batch_id, None, completion.elapsed, _task_failure(completion.payload, piece.batch))
        if _died_starting(completion):
            # A worker that cannot start (sys.path, sitecustomize, initializer) is replaced, and
            # its batch given to the next one; three in a row end the call, never a respawn loop.
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                return Resolved(piece.batch_id, None, 0.0, _reports.start_error(completion, self._start_failures))
            self.replace_workers()
            self._submit(piece)
            return None
        if completion.kind == CompletionKind.Cancelled:  # withdrawn by `cancel`
            return Resolved(piece.batch_id, None, 0.0, _reports.cancelled_error(completion, piece.batch))
        if piece.collect:
            return self._salvage(piece, completion)
        return Resolved(piece.batch_id, None, 0.0, self._lost(piece, completion))

    def _record(
        self,
        piece: Piece,
        sent: tuple,
        completion: EngineCompletion,
        outcome: str,
        timing: tuple[float, float, float] | None = None,
        unpickle_seconds: float = 0.0,
    ) -> None:
        """Tell the recorder how ``piece``'s job went: a done one with the worker's timing, a
        failed or lost one from the engine's clock."""
        received = monotonic()
        submitted, pickle_seconds, bytes_pickled, bytes_shared, bytes_copied, bytes_resent = sent
        if timing is not None:
            arrived, load, run = timing
            dump = max(completion.elapsed - run, 0.0)
        else:
            load = dump = 0.0
            run = max(completion.elapsed, 0.0)
            arrived = max(submitted, received - run)
        payload, buffers = completion.payload, completion.buffers
        assert self.recorder is not None
        self.recorder.record(  # BatchRecord's fields, as a plain tuple (see CallRecorder.record)
            (
                piece.batch_id,
                piece.batch.start,
                len(piece.batch),
                completion.pid,
                submitted,
                arrived,
                min(arrived + load + run + dump, received),
                received,
                load,
                run,
                dump,
                pickle_seconds,
                unpickle_seconds,
                bytes_pickled,
                bytes_shared,
                bytes_copied,
                bytes_resent,
                len(payload) if payload else 0,
                sum(len(buffer) for buffer in buffers) if buffers else 0,
                outcome,
            )
        )

    def flush_record(self) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        recorder.threads_per_worker = self._threads_per_worker
        for at, pid, what, detail in self._pool.take_worker_events():
            recorder.events.append(WorkerEvent(at, f"pid {pid}", what, detail))

    def _lost(self, piece: Piece, completion: EngineCompletion) -> BaseException:
        """The error of a batch whose worker died or was stopped."""
        if self.policy.independent:
            then = "the worker was replaced; the other tasks go on"
        else:
            then = "the pool replaced the worker and cancelled the other tasks of this call"
        return self._lost_error(completion, piece.batch, then)

    def _lost_error(self, completion: EngineCompletion, batch: Batch, then: str) -> BaseException:
        if completion.kind == CompletionKind.Timeout:
            return _reports.timeout_error(completion, batch, self._timeout, then, self.policy.timeout_setting)
        return _reports.crash_error(completion, batch, then)

    def _mark_failed(self, piece: Piece, error: BaseException) -> Any:
        """What a failed task of ``piece`` leaves in its result slot when its batch collects
        errors: the exception itself (``return_exceptions``), or the policy's mark of it."""
        mark = self.policy.mark_failed
        if mark is None:
            return error
        self._with_failures.add(piece.batch_id)
        return mark(error)

    def replace_workers(self) -> None:
        """Start workers for those that died, were stopped or retired. With an independent
        policy, a worker that cannot be started now (the system is out of processes) is tried
        again at the next ``replace_if_short``: nothing waiting is lost."""
        try:
            self._pool.ensure_workers(self.n_workers)
            self.short_of_workers = False
        except Exception:
            if not self.policy.independent:
                raise
            self.short_of_workers = True

    def replace_if_short(self) -> None:
        if self.short_of_workers:
            self.replace_workers()

    def cancel(self, batch_id: int, kill_running: bool) -> bool:
        """Withdraw the jobs of one batch: queued ones are dropped, running ones killed if
        ``kill_running`` (each then completes as cancelled). Whether any was found."""
        states = [self._pool.cancel_job(job, kill_running) for job in self._jobs_of(batch_id)]
        return any(state != "unknown" for state in states)

    def _salvage(self, piece: Piece, completion: EngineCompletion) -> Resolved | None:
        """``return_exceptions``: the task the dead (or stopped) worker was running gets its error
        in its slot — a crash only on its second crash, alone on a fresh worker — and the other
        tasks of its batch run again."""
        culprit = min(max(completion.tasks_started - 1, 0), len(piece.batch) - 1)
        self.replace_workers()
        self._assemblies.expect(piece)
        others, alone = piece.around(culprit)
        for part in others:
            self._submit(part)
        then = "the other tasks of its batch were run again"
        if completion.kind == CompletionKind.Timeout:
            error: BaseException = self._lost_error(completion, alone.batch, then)
        elif piece.retried:
            error = _reports.crash_error(completion, alone.batch, "it had crashed a worker before too")
        else:
            self._submit(alone)
            return None
        return self._fill(alone, [self._mark_failed(alone, error)], 0.0)

    def _fill(self, piece: Piece, results: list[Any], elapsed: float) -> Resolved | None:
        completion = self._assemblies.fill(piece, results, elapsed)
        if completion is None:
            return None
        has_failures = completion.batch_id in self._with_failures
        self._with_failures.discard(completion.batch_id)
        return Resolved(completion.batch_id, completion.results, completion.elapsed, None, has_failures)

    def abort(self, everything: bool = False) -> None:
        if everything:
            self._pool.terminate()
        elif self._jobs:
            self._pool.cancel()
        self._jobs.clear()
        self._sent.clear()
        self._assemblies.clear()

    def close(self) -> None:
        self.abort()
        self._pool.set_limits()  # the warm pool outlives this call's limits
        self._arguments = ArgumentStore(Arena())  # closes this session's shared memory now
        self._release()


#: Workers that die before running anything, in a row, before the call fails (WorkerStartError).
MAX_START_FAILURES = 3


_OUTCOMES = {
    int(CompletionKind.Done): "done",
    int(CompletionKind.Failed): "failed",
    int(CompletionKind.Timeout): "timeout",
    int(CompletionKind.Cancelled): "cancelled",
}


def _threads_per_worker(env: dict[str, str]) -> int | None:
    """The most BLAS/OpenMP threads a worker started with ``env`` may run (None: not capped)."""
    values = [int(env[name]) for name in _THREAD_LIMIT_VARS if env.get(name, "").strip().isdigit()]
    return max(values) if values else None


def _died_starting(completion: EngineCompletion) -> bool:
    """Whether the worker died before running anything: at start-up, not in a task."""
    return (
        completion.kind in (CompletionKind.Exited, CompletionKind.Signaled)
        and completion.tasks_started == 0
        and completion.jobs_done == 0
    )


def _explain_unpicklable_batch(batch: Batch, error: Exception) -> Exception:
    for offset, (function, args, kwargs) in enumerate(batch.calls):
        explained = _pickling.unpicklable_argument(function, args, kwargs, batch.describe(offset))
        if explained is not None:
            return explained
    return error


def _load_results(completion: EngineCompletion, batch: Batch) -> JobResults:
    """A done job's results, the offsets of those that are failure reports (tasks that raised
    in a batch collecting errors), and the worker's timing."""
    assert completion.payload is not None, "a done job always has a payload"
    try:
        return JobResults._make(pickle.loads(completion.payload, buffers=completion.buffers))
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
                f"the arguments of {batch.describe_all()} could not be loaded in the worker process: "
                f"{report.type_name}: {report.message}",
                "an argument unpickles differently in a fresh process (its module cannot be",
                "imported there, or its __reduce__/__setstate__ failed); make its module",
                "importable, or build the object inside the task",
            ),
            code="FJ101",
        )
        error.__cause__ = RemoteTraceback(report.traceback)
        return error
    return _failures.to_exception(report, batch.describe(report.offset))
