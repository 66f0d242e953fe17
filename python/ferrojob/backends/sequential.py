"""The sequential backend: every task runs in the calling thread, in order, lazily."""

from __future__ import annotations

from .base import Backend, CallOptions, Session


class SequentialBackend(Backend):
    """Runs tasks one after another in the calling thread (what ``n_jobs=1`` means)."""

    name = "sequential"
    supports_sharedmem = True
    in_process = True

    def effective_n_jobs(self, n_jobs: int) -> int:
        return 1

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        raise RuntimeError("the sequential backend runs in the calling thread; it has no session")
