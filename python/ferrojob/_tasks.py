"""Reading delayed calls from the user's iterable and cutting them into batches.

Every item is checked as it is read, so a misuse is reported with the item's position and value
before anything runs on it. Batches are columnar: consecutive calls of one function become
``(function, [args...], [kwargs...] or None)``, so the function is pickled once per batch.
"""

from __future__ import annotations

import itertools
import reprlib
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, NamedTuple

from ._core import call_columns, read_calls

Call = tuple  # (function, args, kwargs), as made by delayed(f)(*args, **kwargs)

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4


def function_name(function: Any) -> str:
    """``Model.fit`` for a method, ``<lambda>`` for a lambda defined anywhere, else the repr."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if not isinstance(name, str):
        return _repr.repr(function)
    return name.rpartition("<locals>.")[2]


def safe_repr(value: Any) -> str:
    """A short repr of ``value`` for messages; never fails, whatever its ``__repr__`` does."""
    try:
        return _repr.repr(value)
    except Exception:
        return f"<{type(value).__name__} object (its repr failed)>"


def describe_arguments(args: tuple, kwargs: dict) -> str:
    """``3, key='a'`` — a call's arguments, short, for messages."""
    parts = [safe_repr(arg) for arg in args]
    parts += [f"{key}={safe_repr(value)}" for key, value in kwargs.items()]
    return ", ".join(parts)


def describe_call(call: Call) -> str:
    """``my_function(3, key='a')`` — a short rendering of one call for error messages."""
    function, args, kwargs = call
    return f"{function_name(function)}({describe_arguments(args, kwargs)})"


class CallSettings(NamedTuple):
    """What every job of a call shares: sent to each worker once per call (``ProcessPool.set_call``),
    not with every job."""

    #: Result buffers of at least this many bytes go back through shared memory (None: never).
    threshold: int | None
    #: The caller's working directory: tasks run there.
    cwd: str


class JobBody(NamedTuple):
    """What a worker receives for one batch (pickled; arguments' large buffers out of band).

    On the wire it is the plain tuple of its fields (``tuple(body)``, read back with
    ``JobBody._make``): cloudpickle looks up every class it meets, which cost a 20 µs round trip
    more per job for this one."""

    #: The batch's calls: ``(function, args list, kwargs list or None)`` columns, or
    #: ``ItemsGroup``s of a map chunk.
    groups: list
    #: A task that raises leaves its error in its slot (``return_exceptions``, map chunks).
    collect: bool


class JobResults(NamedTuple):
    """What a worker sends back for a batch that ran (on the wire: the plain tuple of its fields,
    as ``JobBody``)."""

    #: One per task started, in order (fewer than the batch's tasks if the worker stopped early).
    results: list
    #: Offsets of the results that are failure reports (``collect``).
    failed: list[int]
    #: ``(time.monotonic() when the job arrived, seconds unpickling it, seconds running its
    #: tasks)``; the pickling of the results is the rest of the job's reported time.
    timing: tuple[float, float, float]


class Batch:
    """Consecutive tasks of one call; ``start`` is the index of the first one."""

    __slots__ = ("calls", "start")

    def __init__(self, start: int, calls: list[Call]) -> None:
        self.start = start
        self.calls = calls

    def __len__(self) -> int:
        return len(self.calls)

    def describe(self, offset: int) -> str:
        """``task 7: my_function(7)`` for the task at ``offset`` in this batch."""
        offset = min(max(offset, 0), len(self.calls) - 1)
        return f"task {self.start + offset}: {describe_call(self.calls[offset])}"

    def describe_all(self) -> str:
        """``task 3: f(3)`` for a batch of one, else ``tasks 3..9``."""
        if len(self.calls) == 1:
            return self.describe(0)
        return f"tasks {self.start}..{self.start + len(self.calls) - 1}"

    def columns(self) -> list[Any]:
        """Group consecutive calls of the same function (see the module docstring)."""
        return call_columns(self.calls)

    def part(self, start: int, end: int) -> Batch:
        """The tasks ``start..end`` of this batch, as a batch of their own."""
        return Batch(self.start + start, self.calls[start:end])


class ItemsGroup:
    """What a worker receives for an ``Executor.map`` chunk: ``function`` applied to each of
    ``items`` (unpacked when ``star``), run at C speed (``_core.run_items``). ``items`` is a
    list, or a range (a chunk of a range input: the worker makes it a list)."""

    __slots__ = ("function", "items", "star")

    def __init__(self, function: Callable[..., Any], items: list[Any] | range, star: bool) -> None:
        self.function = function
        self.items = items
        self.star = star

    def __reduce__(self) -> tuple:
        return ItemsGroup, (self.function, self.items, self.star)

    def calls(self) -> list[Call]:
        """The chunk as call triples (for the slow paths: errors, memory caps)."""
        if self.star:
            return [(self.function, item, {}) for item in self.items]
        return [(self.function, (item,), {}) for item in self.items]


class ItemsBatch(Batch):
    """Consecutive items of a map call, kept as the bare items (no call triple per item)."""

    __slots__ = ("group",)

    def __init__(self, start: int, group: ItemsGroup) -> None:
        self.start = start
        self.group = group

    @property
    def calls(self) -> list[Call]:  # type: ignore[override]
        return self.group.calls()

    def __len__(self) -> int:
        return len(self.group.items)

    def columns(self) -> list[Any]:
        return [self.group]

    def part(self, start: int, end: int) -> Batch:
        group = self.group
        return ItemsBatch(self.start + start, ItemsGroup(group.function, group.items[start:end], group.star))


class _Source:
    """What the driver (``parallel.run_batches``) reads batches from: an iterator, read ahead
    into a buffer as ``fill`` asks."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self._buffer: list[Any] = []
        self._read = 0  # items read from the iterator so far
        self._handed_out = 0
        self._iterator_done = False

    @property
    def exhausted(self) -> bool:
        return self._iterator_done and not self._buffer

    @property
    def n_read(self) -> int:
        return self._read


class TaskSource(_Source):
    """The user's iterable of delayed calls, read ahead just enough to size the next batch.

    ``reject(item, index)`` is called for an item that is not a delayed call; it raises.
    """

    def __init__(self, iterable: Iterable[Any], reject: Callable[[Any, int], Call]) -> None:
        super().__init__(iter(iterable))
        self._reject = reject

    def fill(self, wanted: int) -> None:
        """Read until ``wanted`` calls are buffered or the iterable ends."""
        need = wanted - len(self._buffer)
        while need > 0 and not self._iterator_done:
            moved, rejected, ended = read_calls(self._iterator, need, self._buffer)
            self._read += moved
            need -= moved
            if rejected is not None:
                self._buffer.append(self._reject(rejected, self._read))
                self._read += 1
                need -= 1
            self._iterator_done = ended

    def remaining_if_known(self) -> int | None:
        """The exact number of calls left, once the iterable has ended."""
        return len(self._buffer) if self._iterator_done else None

    def take(self, n: int) -> Batch | None:
        """The next ``n`` buffered calls as a batch (fewer at the end); None when none are left."""
        if not self._buffer:
            return None
        calls = self._buffer[:n]
        del self._buffer[:n]
        batch = Batch(self._handed_out, calls)
        self._handed_out += len(calls)
        return batch

    def calls(self, batch_size: int = 1) -> Iterator[Call]:
        """Every remaining call, validated, read ``batch_size`` at a time (for in-process
        execution: as joblib, a batch is read from the iterable before its calls run)."""
        while True:
            self.fill(batch_size)
            batch = self.take(batch_size)
            if batch is None:
                return
            yield from batch.calls


class ItemsSource(_Source):
    """The input of ``Executor.map(function, *iterables)``, read in slices at C speed: the same
    interface as ``TaskSource``, handing out ``ItemsBatch`` es."""

    def __init__(self, function: Callable[..., Any], iterables: tuple[Iterable[Any], ...]) -> None:
        star = len(iterables) != 1
        super().__init__(zip(*iterables, strict=False) if star else iter(iterables[0]))
        self._function = function
        self._star = star
        # A list or a range is sliced, not iterated (what its iterator would read, position by
        # position): a list's chunk is one copy of pointers, a range's a range, sent as such.
        first = iterables[0] if iterables else None
        self._sequence: list[Any] | range | None = None
        if not star and (type(first) is list or type(first) is range):
            self._sequence = first
        # Sized inputs (a range, a list) say how many items are left without being read ahead:
        # reading 100,000 items to find the tail would keep the workers waiting.
        lengths = [len(iterable) if isinstance(iterable, Sized) else None for iterable in iterables]
        self._length = None if None in lengths else min(lengths, default=0)  # type: ignore[type-var]

    def fill(self, wanted: int) -> None:
        if self._sequence is not None:
            return  # sliced when taken: read ahead, its chunks would be lists, not ranges
        if self._length is not None:
            wanted = min(wanted, 1)  # the tail is known from the length: read when taken
        self._read_up_to(wanted)

    def _read_up_to(self, wanted: int) -> None:
        need = wanted - len(self._buffer)
        if need <= 0 or self._iterator_done:
            return
        more = self._next_items(need)
        self._read += len(more)
        self._buffer += more
        self._iterator_done = len(more) < need

    def _next_items(self, need: int) -> list[Any] | range:
        """Up to ``need`` more items of the input."""
        if self._sequence is not None:
            return self._sequence[self._read : self._read + need]
        return list(itertools.islice(self._iterator, need))

    def remaining_if_known(self) -> int | None:
        if self._iterator_done:
            return len(self._buffer)
        if self._length is not None:
            return max(self._length - self._read, 0) + len(self._buffer)
        return None

    def take(self, n: int) -> ItemsBatch | None:
        need = n - len(self._buffer)
        if need > 0 and not self._iterator_done:
            # Read straight into the chunk (a map's chunks are up to 65,536 items: no copies).
            more = self._next_items(need)
            self._read += len(more)
            self._iterator_done = len(more) < need
            items = [*self._buffer, *more] if self._buffer else more
            self._buffer = []
        else:
            items = self._buffer[:n]
            del self._buffer[:n]
        if not items:
            return None
        batch = ItemsBatch(self._handed_out, ItemsGroup(self._function, items, self._star))
        self._handed_out += len(items)
        return batch
