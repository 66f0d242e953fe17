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

import os
import sys
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ._futures import FuturesRunner
from ._runlog import CallRecorder
from .backends import follow_default_of
from .backends.base import CallOptions
from .backends.processes import ProcessSession, in_worker
from .config import ReportFiles, current_config, is_default
from .cpus import resolve_n_jobs
from .report import RunReport

__all__ = ["FerrojobBackend", "register"]


class FerrojobBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running batches in ferrojob's warm Rust-managed worker processes, through
    the futures runner the ``Executor`` uses (``ferrojob._futures``)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        self._runner: FuturesRunner | None = None
        self._report_files: ReportFiles | None = None

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
        session = ProcessSession(n_jobs, options, extra_env=self._prepare_worker_env(n_jobs))
        files = current_config().report
        if not is_default(files) and files is not None:
            # ferrojob's parallel_config(report=...) around joblib's (or scikit-learn's) calls:
            # each call's report, where a task is one of joblib's batches.
            self._report_files = files
            session.recorder = CallRecorder("ferrojob (under joblib)", n_jobs)
        # One joblib call is one call of the session: its batches share the arrays placed.
        self._runner = FuturesRunner(session, call_per_submission=False)
        return n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[[Future], Any] | None = None) -> Future:
        runner = self._runner
        assert runner is not None, "submit() before configure()"
        future = runner.submit(func, (), {})
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        if self._runner is None:
            return
        self._runner.cancel_everything()
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            recorder = runner.session.recorder
            if recorder is not None:
                runner.session.flush_record()
            runner.shutdown(wait=True, cancel_futures=True)
            files, self._report_files = self._report_files, None
            if recorder is not None and files is not None:
                recorder.finish()
                files.write(RunReport.from_recorder(recorder))
        self.reset_batch_stats()


def register() -> None:
    """Register ``FerrojobBackend`` with joblib under the name "ferrojob". Inside a ferrojob
    worker, also make joblib's process backends threads: a nested ``joblib.Parallel`` (a
    scikit-learn estimator with ``n_jobs=-1`` in a task) then runs in threads, as it does
    inside a loky worker, and never starts a pool whose processes would outlive the worker."""
    import joblib

    joblib.register_parallel_backend("ferrojob", FerrojobBackend)
    if os.environ.get(SWAP_VARIABLE) == "1":
        swap_public_names()
    from .backends.processes import in_worker

    if in_worker():
        from joblib import parallel

        threads = parallel.BACKENDS["threading"]
        for name in ("loky", "multiprocessing"):
            parallel.BACKENDS[name] = threads
        joblib.register_parallel_backend("threading", threads, make_default=True)


#: Set to "1", joblib's public names resolve to ferrojob's in this process and its workers (the
#: harness that runs joblib's own test suite against ferrojob; see tests/joblib_suite).
SWAP_VARIABLE = "FERROJOB_AS_JOBLIB"


def swap_public_names() -> None:
    """Make ``joblib.<name>`` ferrojob's ``<name>`` for every public name ferrojob has (the
    others, such as ``Logger`` or ``register_store_backend``, stay joblib's)."""
    import joblib
    from joblib import parallel

    import ferrojob

    # Not a public name, but what libraries built on joblib ask (mne's parallel_func): the
    # backend and n_jobs in force, which ferrojob's parallel_config now decides.
    parallel.get_active_backend = get_active_backend
    follow_default_of(parallel)
    originals = {name: getattr(joblib, name) for name in joblib.__all__ if name in ferrojob.__all__}
    # Wherever joblib's modules hold the original (``from joblib.parallel import Parallel``).
    modules = [module for name, module in list(sys.modules.items()) if name == "joblib" or name.startswith("joblib.")]
    for name, original in originals.items():
        replacement = getattr(ferrojob, name)
        for module in modules:
            if getattr(module, name, None) is original:
                setattr(module, name, replacement)


def get_active_backend(prefer: Any = None, require: Any = None, verbose: Any = 0) -> tuple[Any, Any]:
    """``joblib.parallel.get_active_backend`` under the import swap: ``(backend, n_jobs)`` as
    joblib gives them, a joblib backend instance and the ``n_jobs`` in force (None: not set), from
    ferrojob's ``parallel_config`` blocks. ``prefer``/``require`` act as in joblib: threads are
    chosen where the backend in force was not."""
    from joblib import parallel

    from .backends import default_backend

    config = current_config()
    n_jobs = None if is_default(config.n_jobs) else config.n_jobs
    prefer = config.prefer if prefer is None and not is_default(config.prefer) else prefer
    require = config.require if require is None and not is_default(config.require) else require
    chosen = config.backend
    if is_default(chosen) or chosen is None:
        if prefer == "threads" or require == "sharedmem":
            return parallel.BACKENDS["threading"](), n_jobs if n_jobs is not None else 1
        chosen = default_backend()
    if isinstance(chosen, str):
        factory = parallel.BACKENDS.get(chosen) or parallel.BACKENDS["ferrojob"]
        backend = factory()
    else:
        backend = chosen  # a backend instance given to parallel_config
    if require == "sharedmem" and not getattr(backend, "supports_sharedmem", False):
        return parallel.BACKENDS["threading"](), n_jobs if n_jobs is not None else 1
    return backend, n_jobs


# Importing this module registers the backend (``ferrojob._joblib_hook`` imports it as soon as
# joblib is imported; imported first, it imported joblib itself above).
register()
