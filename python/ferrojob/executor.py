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

import concurrent.futures
import itertools
import numbers
import queue
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from . import _misuse, _runlog
from ._core import Scheduler
from ._futures import EXECUTOR_POLICY, TASKS_PER_WORKER, FuturesRunner, Raised
from ._runlog import CallRecorder
from ._settings import DEFAULT_MAX_NBYTES, EXECUTOR, check_given
from ._tasks import Batch, ItemsSource
from .backends.base import CallOptions, Completion, Session
from .backends.processes import ProcessSession
from .cpus import cpu_count
from .errors import InvalidParameterError, compose_message
from .parallel import run_batches
from .report import RunReport

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: The worker time an automatic map chunk aims at: shorter than Parallel's batches (20 ms), so
#: that reading and pickling the next chunks overlaps the workers' work on small inputs
#: (100,000 tiny items: 7.6-8.2 ms against 8.3-9.9 ms at 20 ms).
_MAP_CHUNK_SECONDS = 0.005
#: The largest automatic map chunk: items are bare values, so big chunks cost the parent little.
_MAX_MAP_CHUNK = 1 << 16


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
        session = ProcessSession(self._max_workers, options, policy=EXECUTOR_POLICY)
        self._recorder = session.recorder = CallRecorder("loky", self._max_workers) if _runlog.COLLECT else None
        self._runner = FuturesRunner(session, True)
        # Dropped without shutdown(): its workers finish the work given, then exit.
        weakref.finalize(self, self._runner.shutdown, False, False)

    def report(self) -> RunReport:
        """A ``RunReport`` of the executor's life so far: every task and map chunk that has
        finished, per worker, with worker events and advice (the newest 100,000 batches).

        Example::

            >>> from ferrojob import Executor
            >>> with Executor(max_workers=2) as executor:
            ...     _ = list(executor.map(abs, range(-50, 50)))
            ...     report = executor.report()
            >>> report.n_tasks
            100
        """
        if self._recorder is None:
            raise RuntimeError("this Executor was made while run reports were off (ferrojob._runlog.COLLECT)")
        self._runner.session.flush_record()
        return RunReport.from_recorder(self._recorder)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
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
            TASKS_PER_WORKER * n,
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
        if type(value) is Raised:
            raise value.error
        yield value


class _MapSession(Session):
    """One ``Executor.map`` call, as ``Parallel``'s driver sees a session: its chunks run on the
    executor's pool; the collector thread hands their outcomes over through ``completed``."""

    def __init__(self, runner: FuturesRunner, deadline: float | None) -> None:
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
