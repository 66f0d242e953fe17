"""The threading backend: real threads in this process, sharing memory, pickling nothing.

Useful when tasks release the GIL (numpy, I/O) or must share objects (``require="sharedmem"``).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, NamedTuple

from .._reports import thread_stack, thread_timeout_error
from .._tasks import Batch
from .base import Backend, CallOptions, Completion, Session
from .pieces import Assemblies, Piece

#: A stuck task is reported this late at most (the watchdog's slack when nothing is due).
_SLACK = 0.01
#: The watchdog's longest sleep (``Event.wait`` refuses timeouts beyond ``time_t``).
_LONGEST_WAIT = 3600.0


class _Stuck(NamedTuple):
    """A task the watchdog found running past the timeout."""

    thread: int
    piece: Piece
    offset: int


class _Ran(NamedTuple):
    """How a batch ran on a thread: its name, when the batch was submitted, began and ended."""

    worker: str
    submitted: float
    started: float
    ended: float


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
        # (generation, piece, when submitted); None stops a thread.
        self._todo: queue.SimpleQueue[tuple[int, Piece, float] | None] = queue.SimpleQueue()
        # (piece, ok, results or error, seconds, how it ran), or a _Stuck task posted by the watchdog
        self._done: queue.SimpleQueue[tuple[Piece, bool, Any, float, _Ran] | _Stuck] = queue.SimpleQueue()
        # thread id -> (piece, offset of the running task, when it started, results so far)
        self._running: dict[int, tuple[Piece, int, float, list[Any]]] = {}
        # Threads left with a stuck task (return_exceptions): they stop after it, unheard.
        self._abandoned: set[int] = set()
        self._assemblies = Assemblies()
        self._generation = 0  # bumped by abort(): batches of older generations are skipped
        self._threads: list[threading.Thread] = []
        for _ in range(n_workers):
            self._start_thread()
        self._closed = threading.Event()
        if timeout is not None:
            threading.Thread(target=self._watch, args=(timeout,), name="ferrojob-thread-watchdog", daemon=True).start()

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"ferrojob-thread-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            item = self._todo.get()
            if item is None:
                return
            generation, piece, submitted = item
            results: list[Any] = []
            arrived = time.monotonic()
            started = time.perf_counter()
            offset = 0
            try:
                for offset, (function, args, kwargs) in enumerate(piece.batch.calls):
                    if generation != self._generation:
                        break
                    self._running[me] = (piece, offset, time.monotonic(), results)
                    if not self._collect:
                        results.append(function(*args, **kwargs))
                        continue
                    try:
                        results.append(function(*args, **kwargs))
                    except (Exception, SystemExit) as error:  # return_exceptions: it is the result
                        results.append(error)
                    if me in self._abandoned:
                        self._abandoned.discard(me)  # thread ids are reused once a thread ends
                        return
            except BaseException as error:
                self._done.put((piece, False, error, 0.0, self._ran(submitted, arrived)))
            else:
                self._done.put((piece, True, results, time.perf_counter() - started, self._ran(submitted, arrived)))
            finally:
                self._running.pop(me, None)

    def submit(self, batch_id: int, batch: Batch) -> None:
        self._todo.put((self._generation, Piece(batch_id, batch, self._collect), time.monotonic()))

    def wait(self) -> Completion:
        while True:
            item = self._done.get()
            if isinstance(item, _Stuck):
                completion = self._on_stuck(item)
            else:
                piece, ok, value, elapsed, ran = item
                if self.recorder is not None:
                    self._record(piece, ok, elapsed, ran)
                if not ok:
                    raise value
                completion = self._assemblies.fill(piece, value, elapsed)
            if completion is not None:
                return completion

    @staticmethod
    def _ran(submitted: float, arrived: float) -> _Ran:
        """How the batch this thread has just finished ran (ended now)."""
        return _Ran(threading.current_thread().name, submitted, arrived, time.monotonic())

    def _record(self, piece: Piece, ok: bool, elapsed: float, ran: _Ran) -> None:
        assert self.recorder is not None
        run = elapsed if ok else ran.ended - ran.started
        self.recorder.record(  # BatchRecord's fields
            (
                piece.batch_id, piece.batch.start, len(piece.batch), ran.worker,
                ran.submitted, ran.started, ran.ended, time.monotonic(),
                0.0, run, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, "done" if ok else "failed",
            )
        )  # fmt: skip

    def _watch(self, timeout: float) -> None:
        """The watchdog: the one owner of "no task outlives its timeout" on threads. It posts a
        stuck task to the completions at its deadline, whether or not anyone is waiting (a
        generator nobody reads, threads that keep producing)."""
        posted: set[tuple[int, int, int]] = set()
        delay = min(timeout, _LONGEST_WAIT)
        while not self._closed.wait(delay):
            now = time.monotonic()
            delay = min(timeout, _LONGEST_WAIT)
            for thread, (piece, offset, started, _) in list(self._running.items()):
                due = started + timeout - now
                key = (thread, id(piece), offset)
                if due > 0:
                    delay = min(delay, due + _SLACK)
                elif key not in posted:
                    posted.add(key)
                    self._done.put(_Stuck(thread, piece, offset))

    def _on_stuck(self, stuck: _Stuck) -> Completion | None:
        running = self._running.get(stuck.thread)
        if running is None or running[0] is not stuck.piece or running[1] != stuck.offset:
            return None  # it finished after all: its results are on their way
        piece, offset, _, results = running
        if not self._collect:
            raise thread_timeout_error(
                piece.batch,
                offset,
                self._timeout or 0.0,
                thread_stack(stuck.thread),
                "a thread cannot be stopped: it finishes the task in the background;",
                "the other tasks of this call were cancelled. Raise the timeout, or use",
                'backend="loky" so that a stuck task can be killed.',
            )
        return self._give_up_on(stuck.thread, piece, offset, results)

    def _give_up_on(self, thread: int, piece: Piece, offset: int, results: list[Any]) -> Completion | None:
        """``return_exceptions``: the stuck task gets a ``TaskTimeoutError`` in its slot, its
        thread is left to finish it unheard (a thread cannot be stopped) and replaced, and the
        rest of its batch runs on the other threads."""
        self._abandoned.add(thread)
        self._running.pop(thread, None)
        self._start_thread()
        self._assemblies.expect(piece)
        error = thread_timeout_error(
            piece.batch,
            offset,
            self._timeout or 0.0,
            thread_stack(thread),
            "a thread cannot be stopped: it finishes the task in the background, unheard;",
            "the other tasks of the call went on",
        )
        if offset + 1 < len(piece.batch):
            self._todo.put((self._generation, piece.part(offset + 1, len(piece.batch)), time.monotonic()))
        done = self._assemblies.fill(piece.part(0, offset), list(results[:offset]), 0.0)
        return self._assemblies.fill(piece.part(offset, offset + 1), [error], 0.0) or done

    def abort(self, everything: bool = False) -> None:
        # Threads cannot be killed: running tasks finish, their results are dropped.
        self._generation += 1
        self._assemblies.clear()
        while True:
            try:
                self._todo.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        self._closed.set()
        self.abort()
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread() and not self._running:
                thread.join(timeout=1.0)
