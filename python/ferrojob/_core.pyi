"""Stubs of ``ferrojob._core``, the Rust engine's bindings (checked by mypy's stubtest)."""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal, final

__all__ = [
    "ENGINE_PATH",
    "STARTING_LIMIT",
    "STATUS_STOP",
    "STATUS_TASKS_STARTED",
    "Arena",
    "Buffer",
    "Completion",
    "CompletionKind",
    "DelayedFunction",
    "EntryLock",
    "Hasher",
    "ProcessPool",
    "Scheduler",
    "Store",
    "buffer_address",
    "call_columns",
    "delayed",
    "dump_extent",
    "install",
    "install_numpy_allocator",
    "looks_like_joblib",
    "read_calls",
    "read_dump",
    "run_items",
    "serve_worker",
    "watches_writes",
    "write_dump",
]

ENGINE_PATH: Literal["linux", "portable"]
STARTING_LIMIT: float
STATUS_STOP: int
STATUS_TASKS_STARTED: int

_Placement = tuple[int, int, int, int]
_Identity = tuple[int, int, int]

def install(
    *,
    function_name: Callable[[Any], str],
    not_callable: Callable[[Any], BaseException],
    damaged_file: type[BaseException],
    invalid_parameter: type[BaseException],
    not_a_dump_file: type[BaseException],
) -> None:
    """Hand the bindings ferrojob's exception classes and misuse helpers (once, at import)."""

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
class CompletionKind:
    """How a job ended (compare with ``==``)."""

    Done: ClassVar[CompletionKind]
    Failed: ClassVar[CompletionKind]
    Exited: ClassVar[CompletionKind]
    Signaled: ClassVar[CompletionKind]
    Timeout: ClassVar[CompletionKind]
    Cancelled: ClassVar[CompletionKind]
    Vanished: ClassVar[CompletionKind]
    Protocol: ClassVar[CompletionKind]
    def __eq__(self, other: object, /) -> bool: ...
    def __int__(self) -> int: ...

@final
class Completion:
    """How one job ended (see ``ProcessPool.wait``)."""

    @property
    def job(self) -> int: ...
    @property
    def kind(self) -> CompletionKind: ...
    @property
    def payload(self) -> bytes | None: ...
    @property
    def buffers(self) -> list[Buffer]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def pid(self) -> int: ...
    @property
    def code(self) -> int | None: ...
    @property
    def tasks_started(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def jobs_done(self) -> int: ...
    @property
    def peak_rss(self) -> int | None: ...
    @property
    def stderr_tail(self) -> bytes | None: ...
    @property
    def time_limit(self) -> float | None: ...

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
    def take_worker_events(self) -> list[tuple[float, int, str, str]]:
        """The worker events since the last call: ``(time.monotonic(), pid, what, detail)``."""
    def submit(
        self,
        job: int,
        payload: bytes,
        arena: Arena,
        buffers: list[Any] = ...,
        identities: Sequence[_Identity | None] = ...,
        mmap_mode: str = "r",
        n_tasks: int = 1,
    ) -> None: ...
    def set_limits(
        self, timeout: float | None = None, max_tasks: int | None = None, max_rss: int | None = None
    ) -> None: ...
    def new_arena(self, chunk_size: int = ...) -> Arena: ...
    def set_call(self, payload: bytes) -> None: ...
    @property
    def owned_here(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> Completion | None: ...
    def wait_for_job(self, job: int, timeout: float | None = None) -> Completion | None: ...
    def cancel(self) -> list[int]: ...
    def cancel_job(self, job: int, kill_running: bool = True) -> Literal["queued", "running", "unknown"]: ...
    def wake(self) -> None: ...
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
        max_batch_size: int | None = None,
        bounded_run_ahead: bool = False,
    ) -> Scheduler: ...
    def can_submit(self) -> bool: ...
    def is_drained(self) -> bool: ...
    def next_batch_size(self, remaining: int | None = None) -> int: ...
    def lookahead(self) -> int: ...
    def register(self, n_tasks: int) -> int: ...
    def complete(self, batch_id: int, elapsed: float, value: Any) -> bool: ...
    def pop_ready(self) -> Any | None: ...

def serve_worker(
    on_init: Callable[[bytes, memoryview], None],
    on_call: Callable[[bytes], None],
    on_task: Callable[[bytes, list[Buffer]], tuple[bool, bytes, list[Any], float]],
) -> None: ...
def run_items(
    function: Callable[..., Any], items: list[Any], star: bool, start: int, results: list[Any], started: int
) -> tuple[int, BaseException | None] | None:
    """Append ``function(item)`` (``function(*item)`` when ``star``) for ``items[start:]`` to
    ``results``, counting started tasks in the worker's status page from ``started``; stops at the
    first exception: ``(its index, the exception)``, or before an item once the parent set the
    stop word: ``(its index, None)``."""

@final
class Buffer:
    """Bytes that rebuilt objects live on: a shared mapping, a mapped file or heap memory.
    Supports the buffer protocol; read-only when the memory is."""

    def __len__(self) -> int: ...
    @property
    def readonly(self) -> bool: ...

@final
class Arena:
    """The shared memory of a session's arguments; jobs hold the chunks they use."""

    def __new__(cls, chunk_size: int = ...) -> Arena: ...
    def place(self, buffer: Any, identity: _Identity | None = None) -> _Placement: ...
    def forget(self, identity: _Identity) -> None: ...
    def new_call(self) -> None: ...
    @property
    def n_open_chunks(self) -> int: ...
    @property
    def bytes_written(self) -> int:
        """Bytes copied into shared memory since the arena was made."""

def buffer_address(object: Any) -> int:
    """The address of the first byte of a buffer-protocol object."""

def watches_writes() -> bool:
    """Whether large arguments are proven unchanged between calls by watching their pages for
    writes (Linux 6.7+) rather than by a fingerprint."""

def install_numpy_allocator() -> str:
    """Have numpy allocate large arrays of this thread in shared memory (worker processes only)."""

@final
class Hasher:
    """A streaming hasher: "xxh3" (xxh3-128) or "blake3"."""

    def __new__(cls, name: str) -> Hasher: ...
    def update(self, data: Any) -> None: ...
    def update_buffer(self, buffer: Any) -> None: ...
    def hexdigest(self) -> str: ...

def write_dump(
    path: str, pickle: bytes, buffers: list[Any], codec: str = "raw", level: int = 3, whole: bool = False
) -> int:
    """Write a dump atomically (with ``whole``: a raw container in one stream of ``codec``); returns its size."""

def read_dump(path: str, mmap_mode: str | None = None) -> tuple[bytes, list[Buffer], bool, list[int]]:
    """Read a dump: (pickle, buffers, whether the buffers are mapped, their offsets in the file)."""

def dump_extent(prefix: bytes, name: str) -> tuple[bool, int]:
    """How much of a stream the dump starting with ``prefix`` occupies: ``(True, n)``, it is ``n``
    bytes long; ``(False, n)``, read until ``prefix`` has ``n`` bytes and ask again."""

def looks_like_joblib(start: bytes) -> bool:
    """Whether the first bytes of a file look like a joblib dump."""

@final
class EntryLock:
    """A lock on one cache entry."""

    def release(self) -> None: ...

@final
class Store:
    """The cache store of a Memory."""

    def __new__(cls, root: str) -> Store: ...
    def entry_dir(self, function: str, key: str) -> str: ...
    def function_dir(self, function: str) -> str: ...
    def contains(self, function: str, key: str) -> bool: ...
    def touch(self, function: str, key: str) -> None: ...
    def lock(self, function: str, key: str, timeout: float) -> EntryLock | None: ...
    def begin(self, function: str, key: str) -> str: ...
    def commit(self, function: str, key: str, temporary: str) -> bool: ...
    def abandon(self, temporary: str) -> None: ...
    def code_version(self, function: str) -> str | None: ...
    def set_code_version(self, function: str, code: str) -> None: ...
    def remove(self, function: str, key: str) -> None: ...
    def clear(self, function: str | None = None) -> None: ...
    def entries(self) -> list[tuple[str, str, int, float]]: ...
    def reduce_size(
        self, bytes_limit: int | None = None, items_limit: int | None = None, age_limit: float | None = None
    ) -> list[tuple[str, str, int, float]]: ...
