"""The one futures runner: ``concurrent.futures`` futures over a ``ProcessSession``, for the
``Executor`` (``submit`` and ``map``) and for ferrojob as a joblib backend.

A submission is a batch of one task; a map chunk is a batch of many, owned by its map call. One
lock serialises the session; one collector thread per runner reads completions and settles
futures outside the lock. A thread blocked in a submission's ``result()`` waits for its job
itself (``Submission``): the engine hands it the completion directly, one thread hand-off
instead of two.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ._core import Completion as EngineCompletion
from ._tasks import Batch
from .backends.processes import ProcessSession, Resolved, SessionPolicy

__all__ = ["EXECUTOR_POLICY", "FailedChunk", "FuturesRunner", "Raised", "Submission"]

#: How often the collector wakes without completions (to notice a shutdown).
POLL = 0.05
#: Tasks handed to the engine per worker: one running, one ready to start the moment it ends.
TASKS_PER_WORKER = 2
#: How long ``kill`` waits for the killed task's future to settle (a SIGKILLed worker is reaped
#: in milliseconds; this bounds a process stuck in the kernel).
KILL_PATIENCE = 10.0


class Raised:
    """In a map chunk's results: the task in this slot raised ``error`` (or its worker died)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class FailedChunk(list):
    """A map chunk's results holding at least one ``Raised``."""

    __slots__ = ()


#: The Executor's sessions: a private pool; batches are independent (a lost one fails alone, its
#: worker replaced); a map chunk's failed task is marked, so that a task returning an exception
#: is not mistaken for one that raised.
EXECUTOR_POLICY = SessionPolicy(
    independent=True, private_pool=True, mark_failed=Raised, timeout_setting="Executor(timeout=...)"
)


class Submission(concurrent.futures.Future):
    """A submission's future. ``result()`` and ``exception()`` wait for its job in the calling
    thread when it is running (``FuturesRunner.wait_here``): the engine's reader thread hands the
    completion to the caller, which settles the future itself. Otherwise (still pending here, or
    already being settled) they wait as any future does, for the collector."""

    def __init__(self, runner: FuturesRunner) -> None:
        super().__init__()
        self._runner = runner

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._runner.wait_here(self, timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._runner.wait_here(self, timeout))


class ChunkOwner(Protocol):
    """A map call: its chunks' outcomes are put on ``completed`` as
    ``(its batch id, results, elapsed, error)``."""

    completed: queue.SimpleQueue[tuple[int, Any, float, BaseException | None]]


#: Who waits for a dispatched batch: a future (``submit``) or a map call and its batch id.
_Owner = concurrent.futures.Future | tuple[ChunkOwner, int]
#: (future, result, error) to settle once the lock is released (callbacks may submit again).
_Settlement = tuple[concurrent.futures.Future, Any, BaseException | None]


class FuturesRunner:
    """Futures over a ``ProcessSession``: ``submit`` makes a future of one task, ``submit_batch``
    runs a map chunk for its owner; one collector thread reads the engine's completions and
    settles them outside the lock (a done-callback may submit again).

    At most ``TASKS_PER_WORKER`` tasks per worker are handed to the engine (one running, one
    ready); the rest wait here as PENDING futures, so ``cancel()`` and ``shutdown(cancel_futures=
    True)`` work as in the standard library. ``call_per_submission``: each submission is a call
    of its own (an array passed again is proven unchanged before it is reused; the Executor),
    else the session's current call goes on (a joblib call's batches).

    The runner never refers to whoever made it, so that dropping an ``Executor`` shuts it down."""

    def __init__(self, session: ProcessSession, call_per_submission: bool) -> None:
        self.n_workers = session.n_workers
        self.session = session
        self.call_per_submission = call_per_submission
        self.session.begin()
        self.lock = threading.Lock()
        #: Set by the collector once it has polled for the last time and closed the session:
        #: a pool shared with later users (the warm pool) is never polled by two collectors.
        self.closed = threading.Event()
        self.stopping = False
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
        future = Submission(self)
        batch = Batch(next(self.task_numbers), [(fn, args, kwargs)])
        settle: list[_Settlement] = []
        with self.lock:
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.pending or len(self.dispatched) >= TASKS_PER_WORKER * self.n_workers:
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
            if self.call_per_submission:
                self.session.new_call()
            self.session.submit(batch_id, batch)
        except Exception as error:  # unpicklable arguments: the future fails, as in the stdlib
            settle.append((future, None, error))
            return
        self.owners[batch_id] = future
        self.dispatched[future] = batch_id

    def _refill(self, settle: list[_Settlement]) -> None:
        while self.pending and len(self.dispatched) < TASKS_PER_WORKER * self.n_workers:
            self._dispatch(*self.pending.popleft(), settle)

    def submit_batch(self, owner: ChunkOwner, local_id: int, batch: Batch) -> int:
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
        once shut down and idle, close the session (the collector alone: it is the session's
        last reader). Should it fail (a bug), everything waiting fails with its error and the
        runner shuts down: nothing waits forever."""
        try:
            self._collect_until_stopped()
        except BaseException as error:
            self._fail_everything(error)
        finally:
            try:
                self.session.close()
            finally:
                self.closed.set()
                _LIVE.discard(self)

    def _fail_everything(self, error: BaseException) -> None:
        settle: list[_Settlement] = []
        with self.lock:
            self.shutting_down = True
            for owner in self.owners.values():
                if isinstance(owner, concurrent.futures.Future):
                    settle.append((owner, None, error))
                else:
                    chunk_owner, local_id = owner
                    chunk_owner.completed.put((local_id, None, 0.0, error))
            settle += [(future, None, error) for future, _ in self.pending if future.set_running_or_notify_cancel()]
            self.owners.clear()
            self.dispatched.clear()
            self.pending.clear()
            self.stopping = True
        _settle(settle)

    def _collect_until_stopped(self) -> None:
        while True:
            try:
                completion = self.session.poll(POLL)
            except Exception:  # the pool was closed under us
                completion = None
            settle: list[_Settlement] = []
            with self.lock:
                if self.stopping:
                    return
                if self._take(completion, settle):
                    self.stopping = True
            _settle(settle)
            if self.stopping:
                return

    def _take(self, completion: EngineCompletion | None, settle: list[_Settlement]) -> bool:
        """Route a completion (None: none came) and hand out what it made room for (lock held);
        whether the runner is shut down and has nothing left."""
        self.session.replace_if_short()
        resolved = self.session.resolve(completion)
        if resolved is not None:
            self._route(resolved, settle)
        self._refill(settle)
        return self.shutting_down and not self.owners and not self.pending

    def wait_here(self, future: concurrent.futures.Future, timeout: float | None) -> float | None:
        """Wait in the calling thread for a dispatched submission's job, and settle it here
        (``Submission``). Returns what is left of ``timeout`` for waiting as any future does:
        when the job is not running (pending here; already settled or being settled by the
        collector), or its completion has not come in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            with self.lock:
                batch_id = self.dispatched.get(future)
                job = None if batch_id is None else self.session.job_of(batch_id)
            if job is None:
                break
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            completion = self.session.wait_for_job(job, left)
            if completion is None:
                break
            settle: list[_Settlement] = []
            try:
                with self.lock:
                    if self._take(completion, settle):
                        self._stop()
            except BaseException as error:  # a bug: nothing may wait forever for it
                self._fail_everything(error)
                raise
            _settle(settle)
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _route(self, resolved: Resolved, settle: list[_Settlement]) -> None:
        owner = self.owners.pop(resolved.batch_id, None)
        if owner is None:
            return  # withdrawn
        error = resolved.error
        if isinstance(owner, concurrent.futures.Future):
            self.dispatched.pop(owner, None)
            settle.append((owner, None if error is not None else resolved.results[0], error))
            return
        chunk_owner, local_id = owner
        results = FailedChunk(resolved.results) if resolved.has_failures else resolved.results
        chunk_owner.completed.put((local_id, results, resolved.elapsed, error))

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
            concurrent.futures.wait([future], timeout=KILL_PATIENCE)
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
                self._stop()
        if wait and not self._on_collector_thread():
            self.closed.wait()

    def _stop(self) -> None:
        """Have the collector close the session and end (lock held; idempotent)."""
        self.stopping = True
        self.session.wake()

    def cancel_everything(self) -> None:
        """Drop every pending and dispatched submission (running ones are stopped); their futures
        are cancelled."""
        with self.lock:
            self.session.abort()
            owners, self.owners = self.owners, {}
            pending, self.pending = self.pending, deque()
            self.dispatched.clear()
        for owner in owners.values():
            if isinstance(owner, concurrent.futures.Future) and not owner.done():
                owner.cancel()  # a running one stays as it is: its outcome is dropped
        for future, _ in pending:
            future.cancel()


def _settle(settlements: list[_Settlement]) -> None:
    for future, result, error in settlements:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


#: Runners not shut down yet: at exit, their pending work completes (as the stdlib's executors' does).
_LIVE: weakref.WeakSet[FuturesRunner] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for runner in list(_LIVE):
        runner.shutdown(True, False)
