"""``ferrojob.Executor``: the standard ``concurrent.futures`` executor on ferrojob's Rust pool.

Work arrives one call at a time (``submit``) or as a lazy stream (``map``), and comes back as
standard ``concurrent.futures.Future`` objects: ``as_completed``, ``wait`` and asyncio's
``run_in_executor`` / ``wrap_future`` work on them unchanged. What ``ProcessPoolExecutor`` cannot
do, this one does: closures and lambdas run (cloudpickle), large arrays travel through shared
memory both ways, a crashed worker fails only its own future (there is no broken pool), a task
can be given a time limit or killed while it runs.

How it runs: every ``submit`` is a batch of one task on the executor's own ``ProcessSession``
(a private pool, workers alive until shutdown); at most two tasks per worker are handed to the
engine at once (one running, one ready), the rest wait here, pending and cancellable, as in the
standard library. ``map`` runs on the same pool through ``Parallel``'s driver: bounded
read-ahead, chunks sized from measured durations, ordered results. One collector thread reads
completions from the engine and settles futures; one lock serialises the session.

Example::

    >>> from ferrojob import Executor
    >>> with Executor(max_workers=2) as executor:
    ...     future = executor.submit(pow, 2, 10)
    ...     squares = list(executor.map(lambda x: x * x, range(5)))
    >>> future.result(), squares
    (1024, [0, 1, 4, 9, 16])
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import numbers
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from . import _misuse
from ._core import Completion as EngineCompletion
from ._core import CompletionKind, ProcessPool, Scheduler
from ._settings import EXECUTOR, check_given
from ._sharedmem import DEFAULT_MAX_NBYTES
from ._tasks import Batch, ItemsSource
from .backends.base import CallOptions, Completion, Session
from .backends.pieces import Piece
from .backends.processes import ProcessSession, private_pool
from .cpus import cpu_count
from .errors import InvalidParameterError, compose_message
from .parallel import run_batches

#: How often the collector wakes without completions (to notice a shutdown, enforce timeouts).
_POLL = 0.05
#: Tasks handed to the engine per worker: one running, one ready to start the moment it ends.
_TASKS_PER_WORKER = 2
#: The worker time an automatic map chunk aims at: shorter than Parallel's batches (20 ms), so
#: that reading and pickling the next chunks overlaps the workers' work on small inputs
#: (100,000 tiny items: 7.6-8.2 ms against 8.3-9.9 ms at 20 ms).
_MAP_CHUNK_SECONDS = 0.005
#: The largest automatic map chunk: items are bare values, so big chunks cost the parent little.
_MAX_MAP_CHUNK = 1 << 16
#: How long ``kill`` waits for the killed task's future to settle (a SIGKILLed worker is reaped
#: in milliseconds; this bounds a process stuck in the kernel).
_KILL_PATIENCE = 10.0


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose tasks run in ferrojob's worker processes.

    Args:
        max_workers: worker processes (default: the CPUs this process may use).
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker before its
            first task (replacement workers too).
        max_tasks_per_worker: a worker is replaced after this many tasks.
        max_worker_memory: a worker whose resident memory exceeds this (bytes, or "2GB") after
            a task is replaced.
        timeout: seconds a single task may run; past it, its worker is killed and its future
            fails with ``TaskTimeoutError``.
        max_nbytes: arguments and results holding buffers (numpy arrays...) of at least this
            size travel through shared memory (an int, "1M", or None: never). Default 64 KiB.
        mmap_mode: how workers see shared arguments: "r" (read-only, default), "r+", "w+", "c".

    A task that raises fails its future with its own exception (the worker's traceback as
    ``__cause__``); a worker that dies fails only the future of the task it ran with
    ``WorkerCrashedError`` and is replaced. ``kill(future)`` stops a running task.

    Example::

        >>> import asyncio
        >>> from ferrojob import Executor
        >>> async def main(executor):
        ...     loop = asyncio.get_running_loop()
        ...     return await loop.run_in_executor(executor, divmod, 17, 5)
        >>> with Executor(max_workers=2) as executor:
        ...     asyncio.run(main(executor))
        (3, 2)
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        timeout: float | None = None,
        max_nbytes: int | str | None = DEFAULT_MAX_NBYTES,
        mmap_mode: str | None = "r",
    ) -> None:
        checked = check_given(
            EXECUTOR,
            lambda _: True,
            max_workers=max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_worker_memory=max_worker_memory,
            timeout=timeout,
            max_nbytes=max_nbytes,
            mmap_mode=mmap_mode,
        )
        options = CallOptions(
            timeout=checked["timeout"],
            max_nbytes=checked["max_nbytes"],
            mmap_mode=checked["mmap_mode"],
            initializer=checked["initializer"],
            initargs=checked["initargs"],
            max_tasks_per_worker=checked["max_tasks_per_worker"],
            max_worker_memory=checked["max_worker_memory"],
        )
        self._max_workers = checked["max_workers"] or cpu_count()
        self._runner = _Runner(self._max_workers, options)
        # Dropped without shutdown(): its workers finish the work given, then exit.
        weakref.finalize(self, self._runner.shutdown, False, False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; returns its future.

        Example::

            >>> from ferrojob import Executor
            >>> with Executor(max_workers=1) as executor:
            ...     executor.submit(sorted, [3, 1, 2]).result()
            [1, 2, 3]
        """
        if not callable(fn):
            raise _misuse.not_callable_task(fn, "Executor.submit")
        return self._runner.submit(fn, args, kwargs)

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
    ) -> Iterator[Any]:
        """``fn`` applied to the items of ``iterables`` (in parallel), results in order.

        The input is read lazily, a few chunks ahead of the results; ``chunksize="auto"`` sizes
        chunks from measured task durations. ``timeout``: seconds from this call after which
        ``next()`` raises ``TimeoutError``. The first task that raises re-raises when its result
        is reached, and the work not started yet is dropped.

        Example::

            >>> from ferrojob import Executor
            >>> with Executor(max_workers=2) as executor:
            ...     list(executor.map(pow, [2, 3], [5, 2]))
            [32, 9]
        """
        if not callable(fn):
            raise _misuse.not_callable_task(fn, "Executor.map")
        if chunksize != "auto" and not (
            isinstance(chunksize, numbers.Integral) and not isinstance(chunksize, bool) and chunksize >= 1
        ):
            raise InvalidParameterError(
                compose_message(
                    f"chunksize={chunksize!r} is not a number of tasks.",
                    'use chunksize="auto" (sized from measured durations) or a positive integer',
                ),
                code="FJ201",
            )
        if timeout is not None and not isinstance(timeout, numbers.Real):
            raise InvalidParameterError(
                compose_message(f"timeout={timeout!r} is not a number of seconds.", "use timeout=None or seconds"),
                code="FJ201",
            )
        for position, iterable in enumerate(iterables, start=2):
            if not isinstance(iterable, Iterable):
                raise _misuse.not_iterable_argument(iterable, position, "Executor.map")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        source = ItemsSource(fn, iterables)
        session = _MapSession(self._runner, deadline)
        n = self._max_workers
        fixed = None if chunksize == "auto" else int(chunksize)
        scheduler = Scheduler(
            n,
            _TASKS_PER_WORKER * n,
            fixed,
            True,
            target_batch_duration=_MAP_CHUNK_SECONDS,
            max_batch_size=_MAX_MAP_CHUNK,
        )
        chunks = run_batches(source, scheduler, session)
        next(chunks)  # the first chunks are dispatched now, as the standard map submits at once
        # Items pass through at C speed: Python code runs per chunk, not per item.
        return itertools.chain.from_iterable(_map_chunks(chunks))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``wait``, return once every future is settled and the
        workers are gone. ``cancel_futures`` cancels the futures that have not started."""
        self._runner.shutdown(wait, cancel_futures)

    def kill(self, future: concurrent.futures.Future) -> bool:
        """Stop ``future``'s task: a running one's worker is killed (and replaced) and the future
        fails with ``TaskCancelledError``; one not started yet is cancelled as by
        ``future.cancel()``. Returns False if the future was already done (or is not this
        executor's). Returns once the future is settled.

        Example::

            >>> import time
            >>> from ferrojob import Executor, TaskCancelledError
            >>> with Executor(max_workers=1) as executor:
            ...     future = executor.submit(time.sleep, 60)
            ...     executor.kill(future)
            ...     isinstance(future.exception(), TaskCancelledError)
            True
            True
        """
        return self._runner.kill(future)

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers

    def __repr__(self) -> str:
        return f"Executor(max_workers={self._max_workers})"


class _Raised:
    """In a map chunk's results: the task in this slot raised ``error`` (or its worker died)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _FailedChunk(list):
    """A map chunk's results holding at least one ``_Raised``."""

    __slots__ = ()


def _map_chunks(chunks: Generator[list[Any], None, None]) -> Iterator[Iterable[Any]]:
    """``Executor.map``'s results, chunk by chunk: a task that failed raises its error when its
    turn comes (the results before it are yielded first); dropping the iterator early drops the
    work left."""
    try:
        for chunk in chunks:
            yield chunk if type(chunk) is list else _until_failure(chunk)
    finally:
        chunks.close()


def _until_failure(chunk: list[Any]) -> Iterator[Any]:
    for value in chunk:
        if type(value) is _Raised:
            raise value.error
        yield value


#: Who waits for a dispatched batch: a future (``submit``) or a map call and its batch id.
_Owner = concurrent.futures.Future | tuple["_MapSession", int]
#: (future, result, error) to settle once the lock is released (callbacks may submit again).
_Settlement = tuple[concurrent.futures.Future, Any, BaseException | None]


class _ExecutorSession(ProcessSession):
    """The executor's session: a private pool; batches are independent (a lost one fails alone,
    its worker replaced), and arguments are checked unchanged at each submission."""

    timeout_setting = "Executor(timeout=...)"

    def __init__(self, n_workers: int, options: CallOptions) -> None:
        super().__init__(n_workers, options)
        #: Map chunks with a failed task (so that clean ones pass without a look at each item).
        self.with_failures: set[int] = set()

    def in_slot(self, piece: Piece, error: BaseException) -> Any:
        # A map chunk's failed task: marked, so that a task returning an exception is not
        # mistaken for one that raised.
        self.with_failures.add(piece.batch_id)
        return _Raised(error)

    def _acquire_pool(
        self, n_workers: int, env: dict[str, str], init: bytes, key_env: tuple
    ) -> tuple[ProcessPool, Callable[[], None]]:
        pool = private_pool(n_workers, env, init)
        return pool, pool.shutdown

    def _lost(self, piece: Piece, completion: EngineCompletion) -> BaseException:
        return self._lost_error(completion, piece.batch, "the executor replaced the worker; other tasks go on")

    def resolve(self, completion: EngineCompletion | None) -> tuple[int, Any, float, BaseException | None] | None:
        outcome = super().resolve(completion)
        if completion is not None and completion.kind not in (CompletionKind.Done, CompletionKind.Failed):
            self.replace_workers()  # a killed or dead worker is replaced
        return outcome

    def replace_workers(self) -> None:
        # A worker that cannot be started now (the system is out of processes) is tried again
        # at the collector's next turn: the futures wait, none is lost.
        try:
            super().replace_workers()
            self.short_of_workers = False
        except Exception:
            self.short_of_workers = True

    short_of_workers = False


class _Runner:
    """The executor's state, shared with its collector thread (which never refers to the
    ``Executor`` itself, so that dropping the executor shuts it down)."""

    def __init__(self, n_workers: int, options: CallOptions) -> None:
        self.n_workers = n_workers
        self.session = _ExecutorSession(n_workers, options)
        self.session.begin()
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.owners: dict[int, _Owner] = {}
        self.dispatched: dict[concurrent.futures.Future, int] = {}
        self.pending: deque[tuple[concurrent.futures.Future, Batch]] = deque()
        self.batch_ids = itertools.count()
        self.task_numbers = itertools.count()
        self.shutting_down = False
        self.collector = threading.Thread(target=self._collect, name="ferrojob-executor", daemon=True)
        self.collector.start()
        _LIVE.add(self)

    # -- submitting ----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        batch = Batch(next(self.task_numbers), [(fn, args, kwargs)])
        settle: list[_Settlement] = []
        with self.lock:
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.pending or len(self.dispatched) >= _TASKS_PER_WORKER * self.n_workers:
                self.pending.append((future, batch))
            else:
                self._dispatch(future, batch, settle)
        _settle(settle)
        return future

    def _dispatch(self, future: concurrent.futures.Future, batch: Batch, settle: list[_Settlement]) -> None:
        """Hand a pending future's task to the engine (lock held); a cancelled one is skipped."""
        if not future.set_running_or_notify_cancel():
            return
        batch_id = next(self.batch_ids)
        try:
            self.session.new_call()  # each submission is a call of its own
            self.session.submit(batch_id, batch)
        except Exception as error:  # unpicklable arguments: the future fails, as in the stdlib
            settle.append((future, None, error))
            return
        self.owners[batch_id] = future
        self.dispatched[future] = batch_id

    def _refill(self, settle: list[_Settlement]) -> None:
        while self.pending and len(self.dispatched) < _TASKS_PER_WORKER * self.n_workers:
            self._dispatch(*self.pending.popleft(), settle)

    def submit_batch(self, owner: _MapSession, local_id: int, batch: Batch) -> int:
        """Dispatch one of a map call's chunks; returns its id (see ``withdraw``)."""
        with self.lock:
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            batch_id = next(self.batch_ids)
            self.session.submit(batch_id, batch, collect=True)
            self.owners[batch_id] = (owner, local_id)
            return batch_id

    def new_map_call(self) -> None:
        with self.lock:
            self.session.new_call()

    def withdraw(self, batch_ids: Iterable[int]) -> None:
        """Forget a map call's batches: queued ones are dropped, running ones finish unheard."""
        with self.lock:
            for batch_id in batch_ids:
                if self.owners.pop(batch_id, None) is not None:
                    self.session.cancel(batch_id, kill_running=False)

    # -- collecting ----------------------------------------------------------------------

    def _collect(self) -> None:
        """The collector thread: settle futures and feed map calls as the engine completes jobs;
        once shut down and idle, close the session. Should it fail (a bug), everything waiting
        fails with its error and the executor shuts down: nothing waits forever."""
        try:
            self._collect_until_closed()
        except BaseException as error:
            self._fail_everything(error)

    def _fail_everything(self, error: BaseException) -> None:
        settle: list[_Settlement] = []
        with self.lock:
            self.shutting_down = True
            for owner in self.owners.values():
                if isinstance(owner, concurrent.futures.Future):
                    settle.append((owner, None, error))
                else:
                    map_session, local_id = owner
                    map_session.completed.put((local_id, None, 0.0, error))
            settle += [(future, None, error) for future, _ in self.pending if future.set_running_or_notify_cancel()]
            self.owners.clear()
            self.dispatched.clear()
            self.pending.clear()
            try:
                self._close()
            finally:
                self.closed.set()
        _settle(settle)

    def _collect_until_closed(self) -> None:
        while not self.closed.is_set():
            try:
                completion = self.session.poll(_POLL)
            except Exception:  # the pool was closed under us
                completion = None
            settle: list[_Settlement] = []
            with self.lock:
                if self.closed.is_set():
                    return
                if self.session.short_of_workers:
                    self.session.replace_workers()
                outcome = self.session.resolve(completion) if completion is not None else None
                if outcome is not None:
                    batch_id, results, elapsed, error = outcome
                    self._route(batch_id, results, elapsed, error, settle)
                self._refill(settle)
                if self.shutting_down and not self.owners and not self.pending:
                    self._close()
            _settle(settle)

    def _route(
        self, batch_id: int, results: Any, elapsed: float, error: BaseException | None, settle: list[_Settlement]
    ) -> None:
        owner = self.owners.pop(batch_id, None)
        if owner is None:
            return  # withdrawn
        if isinstance(owner, concurrent.futures.Future):
            self.dispatched.pop(owner, None)
            settle.append((owner, None if error is not None else results[0], error))
            return
        map_session, local_id = owner
        if batch_id in self.session.with_failures:
            self.session.with_failures.discard(batch_id)
            results = _FailedChunk(results)
        map_session.completed.put((local_id, results, elapsed, error))

    # -- stopping ------------------------------------------------------------------------

    def kill(self, future: concurrent.futures.Future) -> bool:
        with self.lock:
            batch_id = self.dispatched.get(future)
            if batch_id is None:
                for index, (waiting, _) in enumerate(self.pending):
                    if waiting is future:
                        del self.pending[index]
                        return future.cancel()
                return False
            found = self.session.cancel(batch_id, kill_running=True)
        if found and not self._on_collector_thread():
            concurrent.futures.wait([future], timeout=_KILL_PATIENCE)
        return found

    def _on_collector_thread(self) -> bool:
        """Whether the caller is a done-callback run by the collector, which must not wait for
        what only the collector can finish."""
        return threading.current_thread() is self.collector

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            self.shutting_down = True
            if cancel_futures:
                while self.pending:
                    self.pending.popleft()[0].cancel()
            if not self.owners and not self.pending:
                self._close()
        if wait and not self._on_collector_thread():
            self.closed.wait()

    def _close(self) -> None:
        """Stop the workers (lock held; idempotent)."""
        if not self.closed.is_set():
            self.session.close()
            self.closed.set()
            _LIVE.discard(self)


class _MapSession(Session):
    """One ``Executor.map`` call, as ``Parallel``'s driver sees a session: its chunks run on the
    executor's pool; the collector thread hands their outcomes over through ``completed``."""

    def __init__(self, runner: _Runner, deadline: float | None) -> None:
        self.n_workers = runner.n_workers
        self._runner = runner
        self._deadline = deadline
        self._batches: dict[int, int] = {}  # local batch id -> the runner's batch id
        self.completed: queue.SimpleQueue[tuple[int, Any, float, BaseException | None]] = queue.SimpleQueue()
        runner.new_map_call()

    def submit(self, batch_id: int, batch: Batch) -> None:
        self._batches[batch_id] = self._runner.submit_batch(self, batch_id, batch)

    def wait(self) -> Completion:
        left = None if self._deadline is None else self._deadline - time.monotonic()
        try:
            batch_id, results, elapsed, error = self.completed.get(timeout=None if left is None else max(left, 0))
        except queue.Empty:
            raise TimeoutError("Executor.map: the next result was not ready within its timeout") from None
        self._batches.pop(batch_id, None)
        if error is not None:
            raise error
        return Completion(batch_id, results, elapsed)

    def abort(self, everything: bool = False) -> None:
        self._runner.withdraw(self._batches.values())
        self._batches.clear()


def _settle(settlements: list[_Settlement]) -> None:
    for future, result, error in settlements:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


#: Executors not shut down yet: at exit, their pending work completes (as the stdlib's does).
_LIVE: weakref.WeakSet[_Runner] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for runner in list(_LIVE):
        runner.shutdown(True, False)
