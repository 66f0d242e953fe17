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

import time
from typing import Any

from .._tasks import Batch
from ..errors import NoClusterError, compose_message
from .base import Backend, CallOptions, Completion, Session
from .remote import check_deadlines, Columns, SharedArguments, run_columns

_TICK = 0.2


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


def _run_on_ray(columns: Columns) -> tuple[list[Any], float]:
    import ray

    def resolve(value: Any) -> Any:
        return ray.get(value) if isinstance(value, ray.ObjectRef) else value

    return run_columns(columns, resolve)


class RaySession(Session):
    def __init__(self, n_jobs: int, options: CallOptions) -> None:
        self._ray = _ray(options)
        self.n_workers = max(int(self._ray.cluster_resources().get("CPU", 1)), 1)
        self._timeout = options.timeout
        self._remote = self._ray.remote(_run_on_ray)
        self._arguments = SharedArguments(self._ray.put, options.max_nbytes)
        self._pending: dict[Any, tuple[int, Batch, float]] = {}

    def submit(self, batch_id: int, batch: Batch) -> None:
        reference = self._remote.remote(self._arguments.replace(batch.columns()))
        self._pending[reference] = (batch_id, batch, time.monotonic())

    def wait(self) -> Completion:
        while True:
            ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=_TICK)
            if ready:
                batch_id, _, _ = self._pending.pop(ready[0])
                # A task's exception comes back as a RayTaskError that is also an instance of
                # the task's own exception type, so `except ValueError` keeps working.
                results, elapsed = self._ray.get(ready[0])
                return Completion(batch_id, results, elapsed)
            check_deadlines(self._pending.values(), self._timeout, "on ray")

    def abort(self, everything: bool = False) -> None:
        for reference in self._pending:
            self._ray.cancel(reference, force=True)
        self._pending.clear()

    def close(self) -> None:
        self.abort()
        self._arguments.clear()
