"""ferrojob's process engine as a joblib backend, so joblib's own ``Parallel`` — and every library
built on it, scikit-learn first — runs on ferrojob's Rust worker pool.

``import ferrojob`` registers the backend "ferrojob" with joblib as soon as joblib is imported
(never importing joblib itself). joblib keeps its batching, callbacks, ``return_as`` and error
handling; ferrojob runs the batches.

Example::

    >>> import joblib, ferrojob
    >>> with joblib.parallel_config(backend="ferrojob", n_jobs=2):
    ...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ._tasks import Batch
from .backends.base import CallOptions
from .backends.processes import ProcessSession, in_worker
from .cpus import resolve_n_jobs

__all__ = ["FerrojobBackend", "register"]

#: How long the collector waits for a completion at a time (``terminate`` wakes it at once).
_POLL = 1.0


class FerrojobBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running batches in ferrojob's warm Rust-managed worker processes."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        self._session: ProcessSession | None = None
        self._lock = threading.Lock()
        self._futures: dict[int, tuple[Future, Callable[[Future], Any] | None]] = {}
        self._next_batch = 0
        self._collector: threading.Thread | None = None
        self._stop = threading.Event()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 1 if in_worker() else resolve_n_jobs(n_jobs)

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None, **kwargs: Any
    ) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        options = CallOptions(inner_max_num_threads=self.inner_max_num_threads)
        self._session = ProcessSession(n_jobs, options, extra_env=self._prepare_worker_env(n_jobs))
        self._session.begin()
        self._stop.clear()
        self._collector = threading.Thread(target=self._collect, name="ferrojob-joblib-collector", daemon=True)
        self._collector.start()
        return n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[[Future], Any] | None = None) -> Future:
        future: Future = Future()
        if callback is not None:
            future.add_done_callback(callback)
        future.set_running_or_notify_cancel()
        session = self._session
        assert session is not None, "submit() before configure()"
        with self._lock:
            batch_id = self._next_batch
            self._next_batch += 1
            self._futures[batch_id] = (future, callback)
            try:
                session.submit(batch_id, Batch(0, [(func, (), {})]))
            except BaseException as error:
                del self._futures[batch_id]
                future.set_exception(error)
        return future

    def retrieve_result_callback(self, future: Future) -> Any:
        return future.result()

    def _collect(self) -> None:
        """Resolve futures as the pool completes their jobs (a thread per configured call)."""
        session = self._session
        assert session is not None
        while not self._stop.is_set():
            completion = session.poll(_POLL)
            if completion is None:
                continue
            with self._lock:
                outcome = session.resolve(completion)
                if outcome is None:
                    continue
                batch_id, results, _, error = outcome
                future, _ = self._futures.pop(batch_id, (None, None))
            if future is None:
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[0])

    def _stop_collector(self) -> None:
        self._stop.set()
        if self._session is not None:
            self._session.wake()
        if self._collector is not None and self._collector is not threading.current_thread():
            self._collector.join()
        self._collector = None

    def abort_everything(self, ensure_ready: bool = True) -> None:
        session = self._session
        if session is None:
            return
        with self._lock:
            session.abort()
            pending, self._futures = self._futures, {}
        for future, _ in pending.values():
            if not future.done():
                future.cancel()
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        self._stop_collector()
        session, self._session = self._session, None
        if session is not None:
            session.close()
        self.reset_batch_stats()


def register() -> None:
    """Register ``FerrojobBackend`` with joblib under the name "ferrojob". Inside a ferrojob
    worker, also make joblib's process backends threads: a nested ``joblib.Parallel`` (a
    scikit-learn estimator with ``n_jobs=-1`` in a task) then runs in threads, as it does
    inside a loky worker, and never starts a pool whose processes would outlive the worker."""
    import joblib

    joblib.register_parallel_backend("ferrojob", FerrojobBackend)
    from .backends.processes import in_worker

    if in_worker():
        from joblib import parallel

        threads = parallel.BACKENDS["threading"]
        for name in ("loky", "multiprocessing"):
            parallel.BACKENDS[name] = threads
        joblib.register_parallel_backend("threading", threads, make_default=True)
