"""What the cluster backends (dask, ray) share: the session that runs batches as cluster tasks,
large arguments sent once per call, and the function that runs a batch on a cluster worker.
Each backend only says how to launch, wait for, fetch, cancel and send objects on its engine."""

from __future__ import annotations

import itertools
import os
import queue
import socket
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from .. import _failures, errors
from .._tasks import Batch
from ..errors import compose_message
from .base import CallOptions, Completion, Session
from .pieces import Assemblies, Piece

#: How often a wait wakes up (for Ctrl-C and deadlines).
TICK = 0.2

Columns = list  # [(function, [args...], [kwargs...] or None)], see ferrojob._tasks.Batch.columns


def is_large(value: Any, threshold: int | None) -> bool:
    """Whether ``value`` is worth sending once and sharing: an array, a DataFrame, bytes..."""
    if threshold is None:
        return False
    if isinstance(value, (bytes, bytearray)):
        return len(value) >= threshold
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes >= threshold
    memory_usage = getattr(value, "memory_usage", None)  # pandas objects
    if callable(memory_usage) and type(value).__module__.startswith("pandas"):
        try:
            usage = memory_usage(index=True)  # a Series per column for a DataFrame, an int else
        except (TypeError, ValueError):
            return False
        total = usage.sum() if hasattr(usage, "sum") else usage
        return int(total) >= threshold
    return False


class SharedArguments:
    """A call's large arguments on the cluster: each object is sent once (by identity) with
    ``put`` and every task refers to it by the returned handle."""

    def __init__(self, put: Callable[[Any], Any], threshold: int | None) -> None:
        self._put = put
        self._threshold = threshold
        # id(object) -> (object, handle): the object is kept so that its id is not reused.
        self._sent: dict[int, tuple[Any, Any]] = {}

    def _handle(self, value: Any) -> Any:
        if not is_large(value, self._threshold):
            return value
        sent = self._sent.get(id(value))
        if sent is None:
            sent = (value, self._send(value))
            self._sent[id(value)] = sent
        return sent[1]

    def _send(self, value: Any) -> Any:
        return self._put(value)

    def replace(self, columns: Columns) -> Columns:
        """``columns`` with every large argument replaced by its handle."""
        replaced = []
        for function, args_list, kwargs_list in columns:
            args_list = [tuple(self._handle(arg) for arg in args) for args in args_list]
            if kwargs_list is not None:
                kwargs_list = [{key: self._handle(value) for key, value in kwargs.items()} for kwargs in kwargs_list]
            replaced.append((function, args_list, kwargs_list))
        return replaced

    @property
    def handles(self) -> list[Any]:
        return [handle for _, handle in self._sent.values()]

    def clear(self) -> None:
        self._sent.clear()


def run_columns(
    columns: Columns,
    collect: bool = False,
    resolve: Callable[[Any], Any] | None = None,
    on_start: Callable[[], None] | None = None,
) -> tuple[list[Any], float, str]:
    """Run a batch on a cluster worker: ``(results, seconds it took, "host:pid" of the worker
    process, for run reports)``. ``collect``
    (``return_exceptions``): a task that raises leaves its report as its result. ``resolve`` turns
    a handle left in the arguments into its value (ray passes nested references unresolved).
    ``on_start`` tells the caller the batch has begun (its timeout clock starts then)."""
    from .. import _failures

    if on_start is not None:
        on_start()
    start = time.perf_counter()
    results = []
    for function, args_list, kwargs_list in columns:
        if kwargs_list is None:
            kwargs_list = [{}] * len(args_list)
        for args, kwargs in zip(args_list, kwargs_list, strict=True):
            if resolve is not None:
                args = tuple(resolve(arg) for arg in args)
                kwargs = {key: resolve(value) for key, value in kwargs.items()}
            if not collect:
                results.append(function(*args, **kwargs))
                continue
            try:
                results.append(function(*args, **kwargs))
            except Exception as error:  # return_exceptions: the report is the result
                results.append(_failures.raised(error, len(results)))
    return results, time.perf_counter() - start, f"{socket.gethostname()}:{os.getpid()}"


def _timeout_error(batch: Batch, timeout: float, where: str, then: str) -> errors.TaskTimeoutError:
    return errors.TaskTimeoutError(
        compose_message(f"{batch.describe_all()} ran longer than timeout={timeout:g} s per task {where}.", then),
        code="FJ302",
    )


class StartClock:
    """When each launched piece of a call began to run, for its timeout: a batch still queued on
    the cluster is not a stuck batch. A backend that can tell when a task starts posts
    ``started(token)`` (from any thread); for the others a piece is taken to start when one of the
    cluster's ``slots`` is free for it, in launch order."""

    def __init__(self, slots: int, signalled: bool) -> None:
        self._slots = slots
        self._signalled = signalled
        self._tokens = itertools.count()
        # token -> when its piece started (None: still queued), in launch order
        self._since: dict[int, float | None] = {}
        self._posted: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()

    def launched(self) -> int:
        """A piece was launched: its token."""
        token = next(self._tokens)
        self._since[token] = None
        self._fill()
        return token

    def left(self, token: int) -> None:
        """The piece finished or was cancelled: its slot is free."""
        self._since.pop(token, None)
        self._fill()

    def started(self, token: int) -> None:
        """The backend saw the piece start (called from any thread)."""
        self._posted.put((token, time.monotonic()))

    def since(self, token: int) -> float | None:
        """When the piece started running, or None while it waits for a worker."""
        while not self._posted.empty():
            posted, when = self._posted.get()
            if posted in self._since:
                self._since[posted] = when
        return self._since.get(token)

    def _fill(self) -> None:
        if self._signalled:
            return
        now = time.monotonic()
        running = sum(1 for since in self._since.values() if since is not None)
        for token, since in self._since.items():
            if running >= self._slots:
                break
            if since is None:
                self._since[token] = now
                running += 1


class ClusterSession(Session):
    """A call on a cluster: each batch is one cluster task (a future), large arguments are sent
    once, a task's error is re-raised with its type, ``timeout`` is enforced per batch from when
    the batch starts running, and leaving cancels what is still running."""

    #: Where the tasks run, for messages ("on ray").
    where = "on the cluster"
    #: Whether ``start_signal`` reports when a task really starts; else a task is taken to start
    #: when a slot is free for it (right where a cancelled task frees its worker).
    signals_start = False

    def __init__(self, options: CallOptions, n_workers: int) -> None:
        self.n_workers = n_workers
        self._timeout = options.timeout
        self._collect = options.return_exceptions
        self._arguments = SharedArguments(self.put, options.max_nbytes)
        # future -> (the piece of a batch it runs, its token on the start clock, when launched)
        self._pending: dict[Any, tuple[Piece, int, float]] = {}
        self._clock = StartClock(n_workers, self.signals_start) if options.timeout is not None else None
        self._assemblies = Assemblies()

    @abstractmethod
    def launch(self, columns: Columns, collect: bool, on_start: Callable[[], None] | None) -> Any:
        """Start a cluster task running ``run_columns(columns, collect, on_start=on_start)``;
        returns its future."""

    def start_signal(self, clock: StartClock, token: int) -> Callable[[], None] | None:
        """What a task calls on its worker to post ``clock.started(token)`` (``signals_start``)."""
        return None

    @abstractmethod
    def first_done(self, futures: list[Any], timeout: float) -> Any | None:
        """One finished future among ``futures``, or None after ``timeout`` seconds."""

    @abstractmethod
    def result(self, future: Any) -> tuple[list[Any], float, str]:
        """The finished task's ``(results, elapsed, worker)`` (what ``run_columns`` returned);
        re-raises its exception."""

    @abstractmethod
    def cancel(self, futures: list[Any]) -> None:
        """Stop these tasks."""

    @abstractmethod
    def put(self, value: Any) -> Any:
        """Send a large argument to the cluster once; returns its handle."""

    def release(self, handles: list[Any]) -> None:
        """Drop the arguments sent for this call (nothing to do where the engine counts refs)."""

    def shut_down(self) -> None:
        """Stop what this session started (a local cluster)."""

    def submit(self, batch_id: int, batch: Batch) -> None:
        self._launch(Piece(batch_id, batch, self._collect))

    def _launch(self, piece: Piece) -> None:
        columns = self._arguments.replace(piece.batch.columns())
        token, on_start = -1, None
        if self._clock is not None:
            token = self._clock.launched()
            on_start = self.start_signal(self._clock, token)
        launched = time.monotonic()
        self._pending[self.launch(columns, self._collect, on_start)] = (piece, token, launched)

    def _forget(self, future: Any) -> Piece:
        piece, token, _ = self._pending.pop(future)
        if self._clock is not None:
            self._clock.left(token)
        return piece

    def wait(self) -> Completion:
        while True:
            future = self.first_done(list(self._pending), TICK)
            if future is not None:
                launched = self._pending[future][2]
                piece = self._forget(future)
                results, elapsed, worker = self.result(future)
                if self.recorder is not None:
                    self._record(piece, launched, elapsed, worker)
                if self._collect:
                    results = _failures.settle(results, piece.batch.describe)
                completion = self._assemblies.fill(piece, results, elapsed)
                if completion is not None:
                    return completion
                continue
            completion = self._enforce_timeout()
            if completion is not None:
                return completion

    def _record(self, piece: Piece, launched: float, elapsed: float, worker: str) -> None:
        """A batch's record, from this side: a cluster worker's clock is not ours, so the batch
        is taken to have ended when its result arrived, after running ``elapsed`` seconds."""
        assert self.recorder is not None
        received = time.monotonic()
        started = max(launched, received - elapsed)
        self.recorder.record(  # BatchRecord's fields
            (
                piece.batch_id, piece.batch.start, len(piece.batch), worker,
                launched, started, received, received,
                0.0, elapsed, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, "done",
            )
        )  # fmt: skip

    def _enforce_timeout(self) -> Completion | None:
        """A batch running past ``timeout`` seconds per task fails the call; with
        ``return_exceptions`` it is cancelled and its tasks run again one by one, so that the stuck
        one (alone past its time) gets a ``TaskTimeoutError`` in its slot and the others their
        results."""
        if self._clock is None or self._timeout is None:
            return None
        now = time.monotonic()
        for future, (piece, token, _) in list(self._pending.items()):
            since = self._clock.since(token)
            if since is None or now - since <= self._timeout * len(piece.batch):
                continue
            if not self._collect:
                raise _timeout_error(
                    piece.batch,
                    self._timeout,
                    self.where,
                    "the call's remaining tasks were cancelled; raise Parallel(timeout=...)",
                )
            self.cancel([future])
            self._forget(future)
            self._assemblies.expect(piece)
            if len(piece.batch) > 1:
                for offset in range(len(piece.batch)):
                    self._launch(piece.part(offset, offset + 1))
                continue
            error = _timeout_error(piece.batch, self._timeout, self.where, "the other tasks of the call went on")
            completion = self._assemblies.fill(piece, [error], 0.0)
            if completion is not None:
                return completion
        return None

    def abort(self, everything: bool = False) -> None:
        if self._pending:
            self.cancel(list(self._pending))
            for future in list(self._pending):
                self._forget(future)
        self._assemblies.clear()

    def close(self) -> None:
        self.abort()
        handles = self._arguments.handles
        if handles:
            self.release(handles)
        self._arguments.clear()
        self.shut_down()
