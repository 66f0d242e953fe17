"""A joblib backend (a subclass of joblib's ``ParallelBackendBase``) driven by ferrojob's
``Parallel``: code that wrote its own joblib backend keeps it after ``import ferrojob as joblib``.

ferrojob's driver reads the iterable, sizes and orders batches; the joblib backend runs each
batch through its own ``configure`` / ``submit`` (or ``apply_async``) / result retrieval /
``abort_everything`` / ``terminate`` methods, as joblib's ``Parallel`` would call them. A
backend that is one of joblib's sequential ones runs in the calling thread.

Example::

    >>> from joblib import ParallelBackendBase
    >>> from joblib._parallel_backends import ThreadingBackend
    >>> from ferrojob import Parallel, delayed
    >>> class Mine(ThreadingBackend):
    ...     pass
    >>> Parallel(n_jobs=2, backend=Mine())(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import queue
import sys
import time
import uuid
from typing import Any

from .._tasks import Batch
from .base import Backend, CallOptions, Completion, Session


def is_joblib_backend(backend: Any) -> bool:
    """Whether ``backend`` is an instance of joblib's ``ParallelBackendBase`` (without importing
    joblib: only joblib's own classes have that base)."""
    return any(
        klass.__name__ == "ParallelBackendBase" and klass.__module__.startswith("joblib.")
        for klass in type(backend).__mro__
    )


def _is_sequential(backend: Any) -> bool:
    return any(
        klass.__name__ == "SequentialBackend" and klass.__module__.startswith("joblib.")
        for klass in type(backend).__mro__
    )


class ForeignBackend(Backend):
    """A joblib backend instance, as a ferrojob backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = type(backend).__name__
        self.supports_sharedmem = bool(getattr(backend, "supports_sharedmem", False))
        self.supports_inner_max_num_threads = bool(getattr(backend, "supports_inner_max_num_threads", False))
        self.in_process = _is_sequential(backend)

    def effective_n_jobs(self, n_jobs: int) -> int:
        return int(self.backend.effective_n_jobs(n_jobs))

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        return ForeignSession(self.backend, n_jobs, _DrivingCall(n_jobs, options))

    def __repr__(self) -> str:
        return f"ForeignBackend({self.backend!r})"


class _DrivingCall:
    """What joblib's backends read of the ``Parallel`` that configures them (its ``parallel=``
    argument): ``n_jobs``, ``verbose``, ``_backend_kwargs`` (passed on when a backend configures
    its nested one), ``_id`` (loky's executor is keyed by it) and ``_print``."""

    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self.n_jobs = n_jobs
        self.verbose = options.verbose
        self._backend_kwargs = dict(options.backend_params)
        self._id = uuid.uuid4().hex

    def _print(self, message: str) -> None:
        if self.verbose:
            print(f"[Parallel(n_jobs={self.n_jobs})]: {message}", file=sys.stderr, flush=True)

    def _effective_n_jobs(self) -> int:
        return self.n_jobs


class _RunBatch:
    """The callable a joblib backend runs: the batch's calls, their results as a list, under
    the backend's nested backend (``get_nested_backend``) as joblib's batches run: a call made
    by a task there uses it."""

    def __init__(self, calls: list, nested: tuple[Any, Any]) -> None:
        self.calls = calls
        self.nested = nested

    def __call__(self) -> list[Any]:
        backend, n_jobs = self.nested
        if backend is None:
            return [function(*args, **kwargs) for function, args, kwargs in self.calls]
        import joblib

        # joblib's settings, as joblib's own batches set them (under the import swap they are
        # ferrojob's): a nested call sees the nested backend through them.
        settings = {"backend": backend} if n_jobs is None else {"backend": backend, "n_jobs": n_jobs}
        with joblib.parallel_config(**settings):
            return [function(*args, **kwargs) for function, args, kwargs in self.calls]

    def __len__(self) -> int:  # joblib's backends may ask a batch its size
        return len(self.calls)


class ForeignSession(Session):
    """A call on a joblib backend: batches go to its ``submit``, results come back through its
    callbacks (``retrieve_result_callback`` when it supports it, else the job's ``get``)."""

    def __init__(self, backend: Any, n_jobs: int, parallel: _DrivingCall) -> None:
        from joblib._parallel_backends import FallbackToBackend

        # As joblib's Parallel calls it: with itself as `parallel` and its backend kwargs.
        try:
            n_workers = backend.configure(n_jobs=n_jobs, parallel=parallel, **parallel._backend_kwargs)
        except FallbackToBackend as fallback:
            backend = fallback.backend
            n_workers = backend.configure(n_jobs=n_jobs, parallel=parallel, **parallel._backend_kwargs)
        self.backend = backend
        self.n_workers = max(int(n_workers), 1)
        if getattr(backend, "nesting_level", 0) is None:
            backend.nesting_level = 0  # a top-level call's, as joblib's Parallel sets it
        nested = backend.get_nested_backend() if hasattr(backend, "get_nested_backend") else None
        # Older backends return the backend alone, without n_jobs.
        self._nested = nested if isinstance(nested, tuple) else (nested, None)
        self._done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._jobs: dict[int, tuple[Any, float]] = {}
        # Entered when results are first waited for, left when the call ends, as joblib's
        # Parallel wraps its retrieval (dask's backend leaves its worker's thread pool there).
        self._retrieving: contextlib.ExitStack | None = None

    def submit(self, batch_id: int, batch: Batch) -> None:
        def callback(out: Any) -> None:
            self._done.put((batch_id, out))

        work = _RunBatch(batch.calls, self._nested)
        started = time.perf_counter()
        if hasattr(self.backend, "submit"):
            job = self.backend.submit(work, callback=callback)
        else:  # joblib < 1.4's backend API
            job = self.backend.apply_async(work, callback=callback)
        self._jobs[batch_id] = (job, started)

    def wait(self) -> Completion:
        if self._retrieving is None:
            self._retrieving = contextlib.ExitStack()
            if hasattr(self.backend, "retrieval_context"):
                self._retrieving.enter_context(self.backend.retrieval_context())
        batch_id, out = self._done.get()
        job, started = self._jobs.pop(batch_id)
        if getattr(self.backend, "supports_retrieve_callback", False):
            results = self.backend.retrieve_result_callback(out)
        else:
            results = job.get() if hasattr(job, "get") else job.result()
        if isinstance(results, BaseException):  # a backend that hands errors back as values
            raise results
        return Completion(batch_id, list(results), time.perf_counter() - started)

    def abort(self, everything: bool = False) -> None:
        self._jobs.clear()
        self.backend.abort_everything(ensure_ready=False)

    def close(self) -> None:
        try:
            if self._retrieving is not None:
                self._retrieving.close()
        finally:
            self.backend.terminate()
