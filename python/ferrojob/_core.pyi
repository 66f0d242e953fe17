"""Stubs of ``ferrojob._core``, the Rust engine's bindings (checked by mypy's stubtest)."""

from typing import Any, Callable, Iterator, final

STATUS_TASKS_STARTED: int

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

@final
class DelayedFunction:
    """``delayed(f)``: calling it with arguments makes the call triple ``(f, args, kwargs)``."""

    @property
    def function(self) -> Callable[..., Any]: ...
    @property
    def __name__(self) -> str: ...
    def __call__(self, *args: Any, **kwargs: Any) -> _Call: ...

def delayed(function: Callable[..., Any]) -> DelayedFunction:
    """Capture a function so that ``delayed(f)(*args, **kwargs)`` describes a call to run later."""

def read_calls(iterator: Iterator[Any], wanted: int, out: list[_Call]) -> tuple[int, Any | None, bool]:
    """Move up to ``wanted`` call triples from ``iterator`` to ``out``; stop at a non-call.

    Returns (items moved, the rejected item or None, whether the iterator ended).
    """

def call_columns(
    calls: list[_Call],
) -> list[tuple[Callable[..., Any], list[tuple[Any, ...]], list[dict[str, Any]] | None]]:
    """Group consecutive calls of the same function into columns."""

@final
class Completion:
    """How one job ended (see ``ProcessPool.wait``)."""

    @property
    def job(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def payload(self) -> bytes | None: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def pid(self) -> int: ...
    @property
    def code(self) -> int | None: ...
    @property
    def tasks_started(self) -> int: ...

@final
class ProcessPool:
    """Warm worker processes that run jobs (opaque payloads) and return their results."""

    def __new__(
        cls,
        program: str,
        args: list[str],
        env: list[tuple[str, str]],
        init: bytes,
        n_workers: int,
        idle_timeout: float | None = None,
    ) -> ProcessPool: ...
    def ensure_workers(self, n: int) -> None: ...
    @property
    def n_workers(self) -> int: ...
    def pids(self) -> list[int]: ...
    def submit(self, job: int, payload: bytes) -> None: ...
    def wait(
        self, timeout: float | None = None, task_timeout: float | None = None
    ) -> Completion | None: ...
    def cancel(self) -> list[int]: ...
    def terminate(self) -> None: ...
    def shutdown(self, grace: float = 1.0) -> None: ...

@final
class Scheduler:
    """Batch sizing, pre-dispatch accounting and result ordering of one parallel call."""

    def __new__(
        cls,
        n_workers: int,
        max_in_flight: int,
        batch_size: int | None = None,
        ordered: bool = True,
        target_batch_duration: float | None = None,
    ) -> Scheduler: ...
    def can_submit(self) -> bool: ...
    @property
    def n_in_flight(self) -> int: ...
    def is_drained(self) -> bool: ...
    def next_batch_size(self, remaining: int | None = None) -> int: ...
    def lookahead(self) -> int: ...
    def register(self, n_tasks: int) -> int: ...
    def complete(self, batch_id: int, elapsed: float, value: object) -> bool: ...
    def forget(self, batch_id: int) -> None: ...
    def pop_ready(self) -> object | None: ...

def serve_worker(
    on_init: Callable[[bytes, memoryview], None],
    on_task: Callable[[bytes], tuple[bool, bytes]],
) -> None: ...
