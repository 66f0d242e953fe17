"""``backend="dask"``: batches run on a dask.distributed cluster.

The client is the one given with ``parallel_config(backend="dask", client=...)``, else the
current one (``distributed.get_client()``); ``parallel_config(backend="dask",
local_cluster=True)`` starts a ``LocalCluster`` for the call instead. Large arguments are
scattered once per call; a batch is one dask task.

Example::

    >>> from dask.distributed import Client, LocalCluster        # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2))                # doctest: +SKIP
    >>> from ferrojob import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="dask"):                     # doctest: +SKIP
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

import time
from typing import Any

from .._tasks import Batch
from ..errors import NoClusterError, compose_message
from .base import Backend, CallOptions, Completion, Session
from .remote import check_deadlines, SharedArguments, run_columns

#: How often a wait wakes up (for Ctrl-C and deadlines).
_TICK = 0.2


class DaskBackend(Backend):
    name = "dask"
    default_n_jobs = -1

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        return DaskSession(n_jobs, options)


def _client(options: CallOptions) -> tuple[Any, Any]:
    """The client to use, and the cluster this call started (to close), if any."""
    try:
        import distributed
    except ImportError:
        raise NoClusterError(
            compose_message(
                'backend="dask" needs dask.distributed, which is not installed.',
                'pip install "dask[distributed]"',
            ),
            code="FJ501",
        ) from None
    params = dict(options.backend_params)
    client = params.get("client")
    if client is not None:
        return client, None
    if params.get("local_cluster"):
        cluster = distributed.LocalCluster(processes=True, threads_per_worker=1)
        return distributed.Client(cluster), cluster
    try:
        return distributed.get_client(), None
    except ValueError:
        raise NoClusterError(
            compose_message(
                'backend="dask" found no dask client to run on.',
                "start one first:  from dask.distributed import Client; client = Client()",
                '(a local cluster), or Client("tcp://scheduler:8786") for a running one; or pass',
                'parallel_config(backend="dask", client=client), or local_cluster=True',
            ),
            code="FJ501",
        ) from None


class DaskSession(Session):
    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self._client, self._cluster = _client(options)
        threads = sum(self._client.nthreads().values()) or 1
        self.n_workers = threads
        self._timeout = options.timeout
        self._arguments = SharedArguments(self._scatter, options.max_nbytes)
        self._pending: dict[Any, tuple[int, Batch, float]] = {}

    def _scatter(self, value: Any) -> Any:
        return self._client.scatter(value, hash=False, broadcast=False)

    def submit(self, batch_id: int, batch: Batch) -> None:
        columns = self._arguments.replace(batch.columns())
        future = self._client.submit(run_columns, columns, pure=False)
        self._pending[future] = (batch_id, batch, time.monotonic())

    def wait(self) -> Completion:
        from distributed import wait

        while True:
            try:
                done, _ = wait(list(self._pending), timeout=_TICK, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            if done:
                future = next(iter(done))
                batch_id, batch, _ = self._pending.pop(future)
                results, elapsed = future.result()  # re-raises the task's exception, with its traceback
                return Completion(batch_id, results, elapsed)
            check_deadlines(self._pending.values(), self._timeout, "on the dask cluster")

    def abort(self, everything: bool = False) -> None:
        if self._pending:
            self._client.cancel(list(self._pending))
            self._pending.clear()

    def close(self) -> None:
        self.abort()
        handles = self._arguments.handles
        if handles:
            self._client.cancel(handles)
        self._arguments.clear()
        if self._cluster is not None:
            self._client.close()
            self._cluster.close()
