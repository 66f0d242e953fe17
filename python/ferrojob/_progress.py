"""Progress reporting: joblib-style ``verbose`` lines, and a tqdm bar for ``progress=True``."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any


class Progress:
    """Reports completed tasks of one call. Silent unless ``verbose > 0`` or ``bar``."""

    def __init__(self, label: str, verbose: int, bar: bool, total: int | None) -> None:
        self._label = label
        self._verbose = verbose
        self._total = total
        self._done = 0
        self._batches = 0
        self._next_report = 1
        self._start = time.monotonic()
        self._bar: Any = None
        if bar:
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
        return self._verbose > 0 or self._bar is not None

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

    def advance(self, n_tasks: int) -> None:
        self._done += n_tasks
        self._batches += 1
        if self._bar is not None:
            self._bar.update(n_tasks)
        # verbose >= 10: every batch; below, at 1, 2, 4, 8, ... batches (joblib prints sparsely too).
        if self._verbose >= 10 or (self._verbose > 0 and self._batches >= self._next_report):
            self._next_report = self._batches * 2
            self._write(f"Done {self._done:4d} tasks      | elapsed: {self._elapsed()}")

    def finished(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._verbose > 0:
            total = self._total if self._total is not None else self._done
            self._write(
                f"Done {self._done:4d} out of {total:4d} | elapsed: {self._elapsed()} finished"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _elapsed(self) -> str:
        seconds = time.monotonic() - self._start
        if seconds < 60:
            return f"{seconds:6.1f}s"
        return f"{seconds / 60:6.1f}min"
