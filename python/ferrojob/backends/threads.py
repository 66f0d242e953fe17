"""The threading backend: real threads in this process, sharing memory, pickling nothing.

Useful when tasks release the GIL (numpy, I/O) or must share objects (``require="sharedmem"``).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from .._tasks import Batch
from ..errors import TaskTimeoutError, compose_message
from .base import Backend, CallOptions, Completion, Session

_POLL = 0.05


class ThreadingBackend(Backend):
    """Runs batches on a set of threads of this process."""

    name = "threading"
    supports_sharedmem = True

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        return ThreadSession(n_jobs, options.timeout, options.return_exceptions)


class ThreadSession(Session):
    def __init__(self, n_workers: int, timeout: float | None, collect: bool = False) -> None:
        self.n_workers = n_workers
        self._timeout = timeout
        self._collect = collect
        # (generation, (batch id, batch)); None stops a thread.
        self._todo: queue.SimpleQueue[tuple[int, tuple[int, Batch]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[int, bool, Any, float]] = queue.SimpleQueue()
        # thread id -> (batch, offset of the running task, when it started)
        self._running: dict[int, tuple[Batch, int, float]] = {}
        self._generation = 0  # bumped by abort(): batches of older generations are skipped
        self._threads = [
            threading.Thread(target=self._work, name=f"ferrojob-thread-{i}", daemon=True)
            for i in range(n_workers)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            item = self._todo.get()
            if item is None:
                return
            generation, (batch_id, batch) = item
            results: list[Any] = []
            started = time.perf_counter()
            offset = 0
            try:
                for offset, (function, args, kwargs) in enumerate(batch.calls):
                    if generation != self._generation:
                        break
                    self._running[me] = (batch, offset, time.monotonic())
                    if not self._collect:
                        results.append(function(*args, **kwargs))
                        continue
                    try:
                        results.append(function(*args, **kwargs))
                    except Exception as error:  # return_exceptions: the error is the result
                        results.append(error)
            except BaseException as error:
                self._done.put((batch_id, False, error, 0.0))
            else:
                self._done.put((batch_id, True, results, time.perf_counter() - started))
            finally:
                self._running.pop(me, None)

    def submit(self, batch_id: int, batch: Batch) -> None:
        self._todo.put((self._generation, (batch_id, batch)))

    def wait(self) -> Completion:
        while True:
            try:
                batch_id, ok, value, elapsed = self._done.get(
                    timeout=None if self._timeout is None else _POLL
                )
            except queue.Empty:
                self._check_timeouts()
                continue
            if ok:
                return Completion(batch_id, value, elapsed)
            raise value

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        assert self._timeout is not None
        for batch, offset, started in list(self._running.values()):
            if now - started > self._timeout:
                raise TaskTimeoutError(
                    compose_message(
                        f"{batch.describe(offset)} ran longer than timeout={self._timeout:g} s.",
                        "a thread cannot be stopped: it finishes the task in the background;",
                        "the other tasks of this call were cancelled. Raise the timeout, or use",
                        'backend="loky" so that a stuck task can be killed.',
                    ),
                    code="FJ302",
                )

    def abort(self, everything: bool = False) -> None:
        # Threads cannot be killed: running tasks finish, their results are dropped.
        self._generation += 1
        while True:
            try:
                self._todo.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        self.abort()
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread() and not self._running:
                thread.join(timeout=1.0)
