"""``backend="ray"``: batches run as ray tasks.

ray must be initialised first (``ray.init()``, or ``ray.init(address=...)`` for a cluster), or
``parallel_config(backend="ray", ray_init=True)`` starts a local ray for the process. Large
arguments go to the object store once per call (``ray.put``); a batch is one ray task.

Example::

    >>> import ray; ray.init(num_cpus=2)                          # doctest: +SKIP
    >>> from ferrojob import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="ray"):                      # doctest: +SKIP
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NoClusterError, compose_message
from .base import Backend, CallOptions, Session
from .remote import ClusterSession, Columns, run_columns


class RayBackend(Backend):
    name = "ray"
    default_n_jobs = -1

    def open(self, n_jobs: int, options: CallOptions) -> Session:
        return RaySession(n_jobs, options)


def _ray(options: CallOptions) -> Any:
    try:
        import ray
    except ImportError:
        raise NoClusterError(
            compose_message('backend="ray" needs ray, which is not installed.', "pip install ray"),
            code="FJ501",
        ) from None
    if not ray.is_initialized():
        if not dict(options.backend_params).get("ray_init"):
            raise NoClusterError(
                compose_message(
                    'backend="ray" needs ray to be initialised first.',
                    "call ray.init() (a local ray) or ray.init(address=...) (a cluster), or pass",
                    'parallel_config(backend="ray", ray_init=True)',
                ),
                code="FJ501",
            )
        ray.init()
    return ray


def _run_on_ray(columns: Columns, collect: bool) -> tuple[list[Any], float, str]:
    import ray

    def resolve(value: Any) -> Any:
        return ray.get(value) if isinstance(value, ray.ObjectRef) else value

    return run_columns(columns, collect, resolve)


class RaySession(ClusterSession):
    where = "on ray"

    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self._ray = _ray(options)
        self._remote = self._ray.remote(_run_on_ray)
        super().__init__(options, max(int(self._ray.cluster_resources().get("CPU", 1)), 1))

    def launch(self, columns: Columns, collect: bool, on_start: Callable[[], None] | None) -> Any:
        # ray's cancel(force=True) ends the worker, freeing its slot: the start clock counts slots.
        return self._remote.remote(columns, collect)

    def first_done(self, futures: list[Any], timeout: float) -> Any | None:
        ready, _ = self._ray.wait(futures, num_returns=1, timeout=timeout)
        return ready[0] if ready else None

    def result(self, future: Any) -> tuple[list[Any], float, str]:
        # A task's exception comes back as a RayTaskError that is also an instance of the task's
        # own exception type, so `except ValueError` keeps working.
        return self._ray.get(future)

    def cancel(self, futures: list[Any]) -> None:
        for reference in futures:
            self._ray.cancel(reference, force=True)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)
