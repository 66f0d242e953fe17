"""``backend="dask"``: batches run on a dask.distributed cluster.

The client is the one given with ``parallel_config(backend="dask", client=...)``, else the
current one (``distributed.get_client()``); ``parallel_config(backend="dask",
local_cluster=True)`` starts a ``LocalCluster`` for the call instead. Large arguments are
scattered once per call; a batch is one dask task, its calls handed to dask already pickled (dask
would otherwise walk every argument of every task looking for futures, and build a node for
each), with the call's scattered arguments beside them.

Example::

    >>> from dask.distributed import Client, LocalCluster        # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2))                # doctest: +SKIP
    >>> from ferrojob import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="dask"):                     # doctest: +SKIP
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from .._pickling import dumps
from ..errors import NoClusterError, compose_message
from .base import Backend, CallOptions, Session
from .remote import ClusterSession, Columns, StartClock, run_columns

#: The dask event topic on which batches say they started (only calls with a timeout use it).
_STARTED = "ferrojob-batch-started"
#: The start clocks of the calls running now, by a key each call's tasks carry.
_clocks: weakref.WeakValueDictionary[str, StartClock] = weakref.WeakValueDictionary()


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


def _post_start(key: str, token: int) -> None:
    """On a dask worker: tell the client that the batch ``token`` of call ``key`` started."""
    from distributed import get_worker

    get_worker().log_event(_STARTED, [key, token])


def _route_start(event: tuple[float, Any]) -> None:
    """On the client (its event loop): hand a start event to its call's clock."""
    _, message = event
    try:
        key, token = message
    except (TypeError, ValueError):
        return
    clock = _clocks.get(key)
    if clock is not None:
        clock.started(token)


class _Scattered:
    """In a batch: a large argument scattered for the call, as its index among the call's
    scattered futures (which travel beside the batch, where dask resolves them)."""

    __slots__ = ("future", "index")

    def __init__(self, index: int, future: Any = None) -> None:
        self.index = index
        self.future = future

    def __reduce__(self) -> tuple:
        return _Scattered, (self.index,)


def _run_pickled(
    pickled: bytes, scattered: list[Any], collect: bool, on_start: Callable[[], None] | None
) -> tuple[list[Any], float, str]:
    """On a dask worker: run a batch pickled by the client; ``scattered``: the values of the
    call's large arguments (dask resolved their futures)."""
    import pickle

    def resolve(value: Any) -> Any:
        return scattered[value.index] if type(value) is _Scattered else value

    return run_columns(pickle.loads(pickled), collect, resolve, on_start)


class DaskSession(ClusterSession):
    where = "on the dask cluster"
    # A cancelled dask task keeps its worker thread until it returns, so a slot count cannot say
    # when the next task starts: each batch posts a start event instead.
    signals_start = True

    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self._client, self._cluster = _client(options)
        self._scattered: list[_Scattered] = []  # the call's large arguments, by index
        super().__init__(options, sum(self._client.nthreads().values()) or 1)
        self._key = uuid.uuid4().hex
        if self._clock is not None:
            _clocks[self._key] = self._clock
            self._client.subscribe_topic(_STARTED, _route_start)

    def launch(self, columns: Columns, collect: bool, on_start: Callable[[], None] | None) -> Any:
        pickled = dumps(columns)
        scattered = [handle.future for handle in self._scattered]
        return self._client.submit(_run_pickled, pickled, scattered, collect, on_start, pure=False)

    def start_signal(self, clock: StartClock, token: int) -> Callable[[], None] | None:
        return functools.partial(_post_start, self._key, token)

    def first_done(self, futures: list[Any], timeout: float) -> Any | None:
        from distributed import wait

        try:
            done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return None
        return next(iter(done), None)

    def result(self, future: Any) -> tuple[list[Any], float, str]:
        return future.result()  # re-raises the task's exception, with its traceback

    def cancel(self, futures: list[Any]) -> None:
        self._client.cancel(futures)

    def put(self, value: Any) -> Any:
        handle = _Scattered(len(self._scattered), self._client.scatter(value, hash=False, broadcast=False))
        self._scattered.append(handle)
        return handle

    def release(self, handles: list[Any]) -> None:
        self._client.cancel([handle.future for handle in handles])
        self._scattered.clear()

    def shut_down(self) -> None:
        if self._cluster is not None:
            self._client.close()
            self._cluster.close()
