"""``Parallel`` and ``delayed``: joblib's API, on ferrojob's engine.

Example::

    >>> from ferrojob import Parallel, delayed
    >>> Parallel(n_jobs=2)(delayed(pow)(i, 2) for i in range(5))
    [0, 1, 4, 9, 16]
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Generator, Iterable
from time import perf_counter
from typing import Any, Literal

from . import _misuse, _runlog
from ._caller import user_location, warn_at
from ._core import Scheduler, delayed
from ._progress import Progress, ProgressUpdate
from ._runlog import CallRecorder
from ._settings import (
    DEFAULT_MAX_NBYTES,
    PARALLEL,
    check,
    check_given,
    check_mmap_mode,
    evaluate_pre_dispatch,
    parse_size,
)
from ._settings import invalid as _invalid
from ._tasks import ItemsSource, TaskSource
from .backends import Backend, CallOptions, Session, default_backend, get_backend
from .config import DEFAULT, Settings, current_config, effective_settings, is_default, is_given
from .cpus import resolve_n_jobs
from .errors import ParallelUsageError, compose_message
from .report import RunReport

__all__ = ["Parallel", "delayed", "effective_n_jobs"]

#: The backends every ferrojob knows by name (others can be registered).
BackendName = Literal["loky", "processes", "multiprocessing", "threading", "sequential", "dask", "ray"]

_STARTED = object()  # first value of the result generator: dispatch has begun


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """The number of workers a ``Parallel(n_jobs=n_jobs)`` call would use here and now.

    Example::

        >>> from ferrojob import cpu_count, effective_n_jobs
        >>> effective_n_jobs(-1) == cpu_count()
        True
    """
    config = current_config()
    if n_jobs is None and not is_default(config.n_jobs):
        n_jobs = config.n_jobs
    backend = get_backend(default_backend() if is_default(config.backend) else config.backend)
    return backend.effective_n_jobs(resolve_n_jobs(n_jobs))


def _explicit_backend(name: Any, require: Any) -> Backend:
    """The backend ``Parallel(backend=name)`` names, refused if it cannot honour ``require``
    (a ``parallel_config`` backend yields to ``require="sharedmem"`` instead)."""
    backend = get_backend(name)
    if require == "sharedmem" and not backend.supports_sharedmem:
        raise _invalid(
            f"backend {name!r} cannot share memory, but require='sharedmem' was given.",
            'use backend="threading", or drop require="sharedmem"',
        )
    return backend


class Parallel:
    """Run an iterable of delayed calls on workers and collect their results in order.

    Parameters (same meaning as in joblib 1.6):
        n_jobs: workers to use. None → 1 (or the value set by ``parallel_config``); -1 → all
            CPUs, -2 → all but one, ...; 1 runs in this process, like a for loop.
        backend: "loky", "processes" or "multiprocessing" (ferrojob's Rust process pool),
            "threading", "sequential", or a name registered with ``register_parallel_backend``.
        return_as: "list" (default), "generator" (ordered, lazy: the input is read a batch at a
            time as results are consumed, at most ``pre_dispatch`` batches ahead) or
            "generator_unordered" (results as they complete).
        prefer: "processes" or "threads": a soft hint used when no backend is chosen.
        require: "sharedmem" forces a backend whose tasks share memory (threads).
        verbose: print progress lines to stderr (>= 10: one per batch; >= 50: to stdout).
        timeout: seconds a single task may run; a stuck process worker is killed and the call
            raises ``TaskTimeoutError`` (a ``TimeoutError``).
        pre_dispatch: batches dispatched ahead of results: an int, "all" or an expression of
            n_jobs (default "2 * n_jobs").
        batch_size: tasks per batch, or "auto" to size batches from measured task durations.
        max_batch_size: the most tasks an automatic batch may hold (progress and memory checks
            happen between batches).
        max_tasks_per_worker: each worker process is replaced after exactly this many tasks
            (batches are cut to a size that divides it).
        max_worker_memory: a worker whose resident memory exceeds this (bytes, or "2GB") after
            a batch is replaced before its next one; set ``max_batch_size`` to check more often.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process
            before its first task (replacement workers too); one that raises fails the call
            with ``WorkerStartError`` naming it, with its traceback.
        max_nbytes: arguments and results holding buffers (numpy arrays, bytearrays...) of at
            least this size travel through shared memory, without copies: an int, a string
            such as "1M", or None (never). Default 64 KiB.
        mmap_mode: how workers see shared arguments: "r" (read-only, the default, writing
            raises numpy's "assignment destination is read-only"), "r+"/"w+" (writable and
            shared by the call's tasks; the caller's own array is not modified), "c" or None
            (writable copy-on-write, private to each task).
        temp_folder: accepted for compatibility with joblib; nothing is written to disk.
        progress: True shows a tqdm progress bar (when tqdm is installed); a callable is called in
            the calling thread after each completed batch with a ``ProgressUpdate``
            (``n_completed``, ``n_total``, ``elapsed``, ``n_failed``).
        return_exceptions: every task runs; one that raises puts its exception (with its remote
            traceback as ``__cause__``) in its result slot instead of failing the call, and a task
            stopped by ``timeout`` or whose worker died puts a ``TaskTimeoutError`` or
            ``WorkerCrashedError`` there (the other tasks of a dead worker's batch run again).

    Use it once, or as a context manager to keep its workers for several calls.

    Example::

        >>> from ferrojob import Parallel, delayed
        >>> def double(x):
        ...     return 2 * x
        >>> Parallel(n_jobs=2)(delayed(double)(x) for x in range(1, 6))
        [2, 4, 6, 8, 10]
        >>> with Parallel(n_jobs=2) as parallel:
        ...     first = parallel(delayed(double)(x) for x in range(3))
        ...     second = parallel(delayed(double)(x) for x in range(3, 6))
        >>> first + second
        [0, 2, 4, 6, 8, 10]
    """

    def __init__(
        self,
        n_jobs: int | float | str | None = DEFAULT,
        backend: BackendName | str | Backend | None = DEFAULT,
        return_as: Literal["list", "generator", "generator_unordered"] = "list",
        verbose: int = DEFAULT,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = DEFAULT,
        max_nbytes: int | str | None = DEFAULT,
        mmap_mode: Literal["r", "r+", "w+", "c"] | None = DEFAULT,
        prefer: Literal["processes", "threads"] | None = DEFAULT,
        require: Literal["sharedmem"] | None = DEFAULT,
        progress: bool | Callable[[ProgressUpdate], object] = False,
        return_exceptions: bool = DEFAULT,
        max_batch_size: int | None = None,
        initializer: Callable[..., object] | None = DEFAULT,
        initargs: tuple[Any, ...] = DEFAULT,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
    ) -> None:
        if n_jobs is None:
            n_jobs = DEFAULT  # as joblib: None in Parallel means "not set" (parallel_config's applies)
        checked = check_given(
            PARALLEL,
            is_given,
            n_jobs=n_jobs,
            backend=DEFAULT if backend is None else backend,
            return_as=return_as,
            verbose=verbose,
            timeout=timeout,
            pre_dispatch=pre_dispatch,
            batch_size=batch_size,
            temp_folder=temp_folder,
            max_nbytes=max_nbytes,
            mmap_mode=mmap_mode,
            prefer=prefer,
            require=require,
            progress=progress,
            return_exceptions=return_exceptions,
            max_batch_size=max_batch_size,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_worker_memory=max_worker_memory,
        )
        if require == "sharedmem" and not is_default(backend) and backend is not None:
            _explicit_backend(backend, require)  # as joblib, the conflict is refused at once
        n_jobs = checked["n_jobs"]
        memory_cap = checked["max_worker_memory"]
        self._n_jobs = n_jobs
        self.backend = backend
        self.return_as = return_as
        self._verbose = verbose
        self.timeout = timeout
        self.pre_dispatch = pre_dispatch
        self.batch_size = batch_size
        self.temp_folder = temp_folder
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.prefer = prefer
        self.require = require
        self.progress = progress
        self.return_exceptions = return_exceptions
        self.max_batch_size = max_batch_size
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory = memory_cap
        self._session: Session | None = None
        # The last call's records (see ``last_report``), and its report once asked for.
        self._recorder: CallRecorder | None = None
        self._report: RunReport | None = None
        # A session runs one call at a time: a second call while the first's generator is
        # unconsumed (or from another thread) would mix their results.
        self._call_lock = threading.Lock()
        self._session_backend: Backend | None = None
        self._session_n_jobs = 0

    def __repr__(self) -> str:
        shown = []
        if not is_default(self._n_jobs):
            shown.append(f"n_jobs={self._n_jobs!r}")
        if not is_default(self.backend) and self.backend is not None:
            shown.append(f"backend={self.backend!r}")
        return f"Parallel({', '.join(shown)})"

    @property
    def n_jobs(self) -> Any:
        """The ``n_jobs`` this Parallel runs with: its own, else the enclosing
        ``parallel_config``'s (None when neither sets it), as joblib shows it."""
        if not is_default(self._n_jobs):
            return self._n_jobs
        config = current_config()
        if is_default(config.n_jobs):
            return None
        if config.n_jobs is None:  # parallel_config(n_jobs=None): the backend's default
            backend = default_backend() if is_default(config.backend) else config.backend
            return get_backend(backend).default_n_jobs
        return config.n_jobs

    @n_jobs.setter
    def n_jobs(self, value: Any) -> None:
        self._n_jobs = DEFAULT if value is None else check("n_jobs", value)

    @property
    def verbose(self) -> Any:
        """The verbosity this Parallel runs with (its own, else ``parallel_config``'s, else 0)."""
        if not is_default(self._verbose):
            return self._verbose
        configured = current_config().verbose
        return 0 if is_default(configured) else configured

    @verbose.setter
    def verbose(self, value: Any) -> None:
        self._verbose = value

    @property
    def last_report(self) -> RunReport | None:
        """The ``RunReport`` of this Parallel's last call (None before its first): where the time
        went, batch by batch, with advice. A call still running reports up to now.

        Example::

            >>> from ferrojob import Parallel, delayed
            >>> parallel = Parallel(n_jobs=2)
            >>> _ = parallel(delayed(abs)(-i) for i in range(10))
            >>> parallel.last_report.n_tasks
            10
        """
        recorder = self._recorder
        if recorder is None:
            return None
        if self._report is None or recorder.ended is None:
            report = RunReport.from_recorder(recorder, recorder.n_tasks)
            if recorder.ended is None:
                return report
            self._report = report
        return self._report

    def _effective_n_jobs(self) -> int:
        """How many workers a call of this ``Parallel`` would use here and now (joblib's private
        spelling, which its users' tests call)."""
        return self._choose()[1]

    # -- choosing the backend -------------------------------------------------------------

    def _settings(self) -> Settings:
        return effective_settings(
            backend=self.backend,
            n_jobs=self._n_jobs,
            verbose=self._verbose,
            max_nbytes=self.max_nbytes,
            mmap_mode=self.mmap_mode,
            prefer=self.prefer,
            require=self.require,
            return_exceptions=self.return_exceptions,
            initializer=self.initializer,
            initargs=self.initargs,
        )

    def _choose(self) -> tuple[Backend, int, CallOptions]:
        settings = self._settings()
        shared = settings.require == "sharedmem"
        if settings.backend_is_explicit:
            backend = _explicit_backend(settings.backend, settings.require)
        elif not is_default(settings.backend):
            backend = get_backend(settings.backend)
            if shared and not backend.supports_sharedmem:
                backend = get_backend("threading")
        elif shared or settings.prefer == "threads":
            backend = get_backend("threading")
        else:
            backend = get_backend(default_backend())
        n_jobs = settings.n_jobs
        if is_default(n_jobs) or n_jobs is None:
            n_jobs = backend.default_n_jobs
        n_workers = backend.effective_n_jobs(resolve_n_jobs(n_jobs))
        if n_workers == 1:
            backend = get_backend("sequential")
        inner = settings.inner_max_num_threads
        options = CallOptions(
            timeout=check("timeout", self.timeout),
            inner_max_num_threads=None if is_default(inner) else inner,
            max_nbytes=(
                DEFAULT_MAX_NBYTES if is_default(settings.max_nbytes) else parse_size(settings.max_nbytes, "max_nbytes")
            ),
            mmap_mode="r" if is_default(settings.mmap_mode) else check_mmap_mode(settings.mmap_mode),
            backend_params=dict(settings.backend_params),
            return_exceptions=settings.return_exceptions,
            initializer=settings.initializer,
            initargs=settings.initargs,
            max_tasks_per_worker=self.max_tasks_per_worker,
            max_worker_memory=self.max_worker_memory,
            verbose=settings.verbose,
        )
        return backend, n_workers, options

    def _fixed_batch_size(self) -> int | None:
        """``batch_size``, or None for automatic sizing. With ``max_tasks_per_worker=N``, batches
        have a fixed size that divides N, so that each worker is replaced after exactly N tasks."""
        if self.batch_size != "auto":
            size = int(self.batch_size)
        elif self.max_tasks_per_worker is None:
            return None
        else:
            size = self.max_batch_size or 2048
        limit = self.max_tasks_per_worker
        if limit is None:
            return size
        return max(d for d in range(1, min(size, limit) + 1) if limit % d == 0)

    def _verbosity(self) -> int:
        return self._settings().verbose

    def _max_in_flight(self, n_workers: int) -> int:
        if self.pre_dispatch == "all":
            return 1 << 40
        if isinstance(self.pre_dispatch, str):
            return evaluate_pre_dispatch(self.pre_dispatch, n_workers)
        return max(int(self.pre_dispatch), 1)

    # -- context manager: keep one session for several calls --------------------------------

    def __enter__(self) -> Parallel:
        backend, n_workers, options = self._choose()
        if not backend.in_process:
            self._session = backend.open(n_workers, options)
            self._session_backend, self._session_n_jobs = backend, n_workers
        return self

    def __exit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- running ----------------------------------------------------------------------------

    def __call__(self, iterable: Iterable[Any]) -> Any:
        """Run every delayed call of ``iterable``; see ``return_as`` for what comes back."""
        label = repr(self)
        if isinstance(iterable, _misuse.DelayedFunction):
            raise _misuse.delayed_not_called(label, iterable, None)
        if _misuse.looks_like_one_call(iterable):
            raise _misuse.single_call(label, iterable)
        try:
            iter(iterable)
        except TypeError:
            raise _misuse.not_an_iterable(label, iterable) from None
        tally = _Tally(user_location() if self.return_as != "list" else None)
        chunks = self._run(iterable, label, tally)
        try:
            first = next(chunks)
        except ParallelUsageError as error:
            # A misuse is the caller's: show their line, not ferrojob's internals.
            raise error.with_traceback(None) from None
        assert first is _STARTED
        if self.return_as == "list":
            results: list[Any] = []
            for chunk in chunks:
                results.extend(chunk)
            return results
        return _flatten(chunks, tally)

    def _run(self, iterable: Iterable[Any], label: str, tally: _Tally) -> Generator[Any, None, None]:
        """Yield ``_STARTED`` once dispatch has begun, then lists of results as they are ready.
        A Parallel runs one call at a time, as joblib's does: a second call while the first's
        generator is unconsumed, or from another thread, would mix their results in a
        ``with Parallel()`` block's session."""
        if not self._call_lock.acquire(blocking=False):
            raise RuntimeError(
                compose_message(
                    f"This Parallel instance is already running a call ({label}): its results "
                    "have not all been read yet (a generator not consumed), or another thread "
                    "is using it.",
                    "consume or close the first call's generator before calling again, and give",
                    "each thread a Parallel of its own",
                )
            )
        try:
            yield from self._run_call(iterable, label, tally)
        finally:
            self._call_lock.release()

    def _run_call(self, iterable: Iterable[Any], label: str, tally: _Tally) -> Generator[Any, None, None]:
        def reject(item: Any, index: int) -> tuple:
            return _misuse.coerce_call(label, iterable, item, index)

        source = TaskSource(iterable, reject)
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        if self._session is not None:
            backend, n_workers = self._session_backend, self._session_n_jobs
            options = None
        else:
            backend, n_workers, options = self._choose()
        progress = Progress(label, self._verbosity(), self.progress, total)
        assert backend is not None
        recorder = CallRecorder(backend.name or type(backend).__name__, n_workers) if _runlog.COLLECT else None
        self._recorder, self._report = recorder, None
        try:
            yield from self._run_on(backend, n_workers, options, source, total, tally, progress, recorder)
        finally:
            if recorder is not None:
                recorder.finish()
                self._write_report()

    def _write_report(self) -> None:
        """After a call: its report to the file ``parallel_config(report=...)`` names, if any."""
        files = current_config().report
        if is_default(files) or files is None:
            return
        report = self.last_report
        assert report is not None
        files.write(report)

    def _run_on(
        self,
        backend: Backend,
        n_workers: int,
        options: CallOptions | None,
        source: TaskSource,
        total: int | None,
        tally: _Tally,
        progress: Progress,
        recorder: CallRecorder | None,
    ) -> Generator[Any, None, None]:
        if backend.in_process:
            if self.timeout is not None and self.timeout != float("inf"):
                # joblib's words: code that filters this warning keeps working.
                warnings.warn(
                    "The backend class 'SequentialBackend' does not support timeout. You have set "
                    f"'timeout={self.timeout}' in Parallel but the 'timeout' parameter will not be used.",
                    UserWarning,
                    stacklevel=3,
                )
            yield _STARTED
            progress.started("SequentialBackend", 1)
            collect = self._settings().return_exceptions
            n_tasks = 0
            try:
                for function, args, kwargs in source.calls(self._fixed_batch_size() or 1):
                    n_tasks += 1
                    if recorder is not None:
                        recorder.n_tasks = n_tasks
                    result = None
                    if not collect:
                        yield [function(*args, **kwargs)]
                    else:
                        try:
                            result = function(*args, **kwargs)
                        except (Exception, SystemExit) as error:  # return_exceptions: it is the result
                            # (as in a worker process; a Ctrl-C of the caller still stops the call)
                            result = error
                        yield [result]
                    if progress.active:
                        if progress.counts_failures and total is None:
                            source.fill(1)  # look one call ahead: is this the last one?
                            if source.exhausted:
                                progress.set_total(source.n_read)
                        progress.advance(1, int(collect and isinstance(result, BaseException)))
                progress.finished()
            finally:
                progress.close()
            return
        session = self._session or backend.open(n_workers, options)  # type: ignore[arg-type]
        owned = self._session is None
        try:
            scheduler = Scheduler(
                session.n_workers,
                self._max_in_flight(session.n_workers),
                self._fixed_batch_size(),
                self.return_as != "generator_unordered",
                max_batch_size=self.max_batch_size,
                # A generator's consumer reads one batch at a time: keep what runs ahead of it
                # within pre_dispatch (about two batches per worker), straggler or not.
                bounded_run_ahead=self.return_as != "list",
            )
            session.begin()
            session.recorder = recorder
            progress.started(type(backend).__name__, session.n_workers)
            yield from run_batches(source, scheduler, session, progress, tally, recorder)
        finally:
            progress.close()
            session.flush_record()
            session.recorder = None
            if owned:
                session.close()


class _Tally:
    """What a call on workers did, for the warning given when its generator is closed early:
    tasks submitted, completed, and consumed by the caller; and the caller's line that made the
    generator, where the warning points (it may be closed much later, by the garbage collector
    or at exit, far from any line of the caller's)."""

    __slots__ = ("completed", "consumed", "finished", "location", "submitted")

    def __init__(self, location: tuple[str, int, dict[str, Any]] | None = None) -> None:
        self.submitted = self.completed = self.consumed = 0
        self.finished = True  # until tasks go to workers: nothing can be wasted
        self.location = location

    def warn_if_wasted(self) -> None:
        unused, cancelled = self.completed - self.consumed, self.submitted - self.completed
        if self.finished or not (unused or cancelled):
            return
        wasted = [f"{unused} computed results were never read"] if unused else []
        wasted += [f"{cancelled} tasks sent to the workers were cancelled"] if cancelled else []
        warn_at(
            self.location,
            f"the generator of a Parallel call was closed before its end: {' and '.join(wasted)}. "
            "To compute less that goes unused, give Parallel fewer inputs, or a smaller pre_dispatch.",
            UserWarning,
        )


def run_batches(
    source: TaskSource | ItemsSource,
    scheduler: Scheduler,
    session: Session,
    progress: Progress | None = None,
    tally: _Tally | None = None,
    recorder: CallRecorder | None = None,
) -> Generator[Any, None, None]:
    """The driver of a call: batches of ``source`` run on ``session`` as ``scheduler`` sizes and
    orders them. Yields ``_STARTED`` once the first batches are dispatched, then lists of results;
    an error (or closing the generator early) aborts the session's batches. With ``tally`` (a
    ``Parallel`` call), the tasks submitted and completed are counted, and closing early warns of
    the work that went unused, as joblib does; ``recorder`` gets the batch sizes and the time
    spent reading ``source``."""
    warn_if_wasted = tally is not None
    tally = tally or _Tally()
    tally.finished = False
    try:
        tally.submitted += _dispatch(source, scheduler, session, recorder)
        yield _STARTED
        while True:
            results = scheduler.pop_ready()
            while results is not None:
                if progress is not None and progress.active:
                    failed = sum(isinstance(r, BaseException) for r in results) if progress.counts_failures else 0
                    progress.advance(len(results), failed)
                yield results
                results = scheduler.pop_ready()
            # Results handed back free room in a bounded run-ahead (see Scheduler).
            tally.submitted += _dispatch(source, scheduler, session, recorder)
            if source.exhausted and scheduler.is_drained():
                break
            completion = session.wait()
            scheduler.complete(completion.batch_id, completion.elapsed, completion.results)
            tally.completed += len(completion.results)
            tally.submitted += _dispatch(source, scheduler, session, recorder)
            if progress is not None and source.exhausted and progress.active:
                progress.set_total(source.n_read)
        tally.finished = True
        if progress is not None:
            progress.finished()
    except BaseException as error:
        session.abort(everything=isinstance(error, KeyboardInterrupt))
        if warn_if_wasted and isinstance(error, GeneratorExit):
            tally.warn_if_wasted()
        raise


def _flatten(chunks: Generator[list[Any], None, None], tally: _Tally) -> Generator[Any, None, None]:
    """The results of ``return_as="generator"``: one at a time; closing it stops the call (see
    ``run_batches``), even when it was never started (the call then ends with ``chunks``)."""
    try:
        for chunk in chunks:
            for result in chunk:
                tally.consumed += 1
                yield result
    finally:
        chunks.close()


def _dispatch(
    source: TaskSource | ItemsSource, scheduler: Scheduler, session: Session, recorder: CallRecorder | None
) -> int:
    """Submit batches while the pre-dispatch window has room and calls are left; returns how
    many tasks went."""
    submitted = 0
    while scheduler.can_submit():
        reading = perf_counter()
        source.fill(scheduler.lookahead())
        batch = source.take(scheduler.next_batch_size(source.remaining_if_known()))
        if recorder is not None:
            recorder.input_seconds += perf_counter() - reading
        if batch is None:
            break
        session.submit(scheduler.register(len(batch)), batch)
        submitted += len(batch)
        if recorder is not None:
            recorder.batch_sizes.append(len(batch))
    return submitted
