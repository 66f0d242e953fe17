"""Progress reporting: joblib-style ``verbose`` lines, a tqdm bar for ``progress=True``, and a
callback for ``progress=callable``."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple


class ProgressUpdate(NamedTuple):
    """What a ``progress=`` callback receives after each completed batch (each task with
    ``n_jobs=1``): tasks completed so far, the total (None while the input's length is unknown),
    seconds since the call started, and tasks whose result is an exception (``return_exceptions``).
    The last call has ``n_completed == n_total``.

    Example::

        >>> from ferrojob import Parallel, delayed
        >>> seen = []
        >>> _ = Parallel(n_jobs=1, progress=seen.append)(delayed(abs)(i) for i in range(3))
        >>> [(u.n_completed, u.n_total) for u in seen]
        [(1, 3), (2, 3), (3, 3)]
    """

    n_completed: int
    n_total: int | None
    elapsed: float
    n_failed: int


class Progress:
    """Reports completed tasks of one call. Silent unless ``verbose > 0`` or ``bar``."""

    def __init__(
        self, label: str, verbose: int, bar: bool | Callable[[ProgressUpdate], Any], total: int | None
    ) -> None:
        self._label = label
        self._verbose = verbose
        self._total = total
        self._done = 0
        self._failed = 0
        self._batches = 0
        self._next_report = 1
        self._start = time.monotonic()
        self._bar: Any = None
        self._callback: Callable[[ProgressUpdate], Any] | None = None
        self._last_reported: tuple[int, int | None] | None = None
        if callable(bar):
            self._callback = bar
        elif bar:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                warnings.warn(
                    "progress=True shows a bar with tqdm, which is not installed "
                    "(pip install tqdm); continuing without one",
                    stacklevel=4,
                )
            else:
                self._bar = tqdm(total=total, desc=label)

    @property
    def active(self) -> bool:
        return self._verbose > 0 or self._bar is not None or self._callback is not None

    @property
    def counts_failures(self) -> bool:
        return self._callback is not None

    def _call_back(self) -> None:
        if self._callback is None:
            return
        self._last_reported = (self._done, self._total)
        self._callback(ProgressUpdate(self._done, self._total, time.monotonic() - self._start, self._failed))

    def _write(self, text: str) -> None:
        stream = sys.stdout if self._verbose >= 50 else sys.stderr
        stream.write(f"[{self._label}]: {text}\n")
        stream.flush()

    def started(self, backend: str, n_workers: int) -> None:
        if self._verbose > 0:
            self._write(f"Using backend {backend} with {n_workers} concurrent workers.")

    def set_total(self, total: int) -> None:
        self._total = total
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, n_tasks: int, n_failed: int = 0) -> None:
        self._done += n_tasks
        self._failed += n_failed
        self._batches += 1
        if self._bar is not None:
            self._bar.update(n_tasks)
        self._call_back()
        # verbose >= 10: every batch; below, at 1, 2, 4, 8, ... batches (joblib prints sparsely too).
        if self._verbose >= 10 or (self._verbose > 0 and self._batches >= self._next_report):
            self._next_report = self._batches * 2
            self._write(f"Done {self._done:4d} tasks      | elapsed: {self._elapsed()}")

    def finished(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._total is None:
            self._total = self._done
        if self._callback is not None and self._last_reported != (self._done, self._total):
            self._call_back()  # the last call always has n_completed == n_total
        if self._verbose > 0:
            total = self._total if self._total is not None else self._done
            self._write(f"Done {self._done:4d} out of {total:4d} | elapsed: {self._elapsed()} finished")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _elapsed(self) -> str:
        seconds = time.monotonic() - self._start
        if seconds < 60:
            return f"{seconds:6.1f}s"
        return f"{seconds / 60:6.1f}min"
