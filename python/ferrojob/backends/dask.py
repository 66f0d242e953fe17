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

from typing import Any

from ..errors import NoClusterError, compose_message
from .base import Backend, CallOptions, Session
from .remote import ClusterSession, Columns, run_columns


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


class DaskSession(ClusterSession):
    where = "on the dask cluster"

    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self._client, self._cluster = _client(options)
        super().__init__(options, sum(self._client.nthreads().values()) or 1)

    def launch(self, columns: Columns, collect: bool) -> Any:
        return self._client.submit(run_columns, columns, collect, pure=False)

    def first_done(self, futures: list[Any], timeout: float) -> Any | None:
        from distributed import wait

        try:
            done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return None
        return next(iter(done), None)

    def result(self, future: Any) -> tuple[list[Any], float]:
        return future.result()  # re-raises the task's exception, with its traceback

    def cancel(self, futures: list[Any]) -> None:
        self._client.cancel(futures)

    def put(self, value: Any) -> Any:
        return self._client.scatter(value, hash=False, broadcast=False)

    def release(self, handles: list[Any]) -> None:
        self._client.cancel(handles)

    def shut_down(self) -> None:
        if self._cluster is not None:
            self._client.close()
            self._cluster.close()
