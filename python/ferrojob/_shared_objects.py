"""Large arguments sent once per call: a model, a dict, a DataFrame passed to many tasks.

Within one call, an argument that is the same Python object (identity) in several tasks and
pickles to more than ``max_nbytes`` is pickled once. Every batch then refers to it by a token
(pickle's persistent ids), its pickle travelling as an out-of-band buffer: placed in shared
memory once per call by identity, mapped by each worker, and unpickled by each worker once — the
worker keeps it by token until the next call's objects arrive.

Only objects seen in at least two tasks, or containers of 1,000 items or more, are measured
(their pickle is what measuring costs), and plain scalars never are.
"""

from __future__ import annotations

import functools
import io
import itertools
import pickle
from typing import Any

from ._pickling import PROTOCOL, _collector, dumps_plain, dumps_with_buffers, pickles_by_reference
from ._tasks import ItemsGroup

#: The persistent-id tag of a shared object.
TAG = "ferrojob-shared"
_SESSIONS = itertools.count(1)
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})


class SharedObjects:
    """The large objects of one call (a ``ProcessSession``), by identity."""

    def __init__(self, threshold: int | None) -> None:
        self._threshold = threshold
        self._session = next(_SESSIONS)
        self._seen: dict[int, int] = {}
        # id -> (the object, kept alive so its id stays its own; its token; its pickle), or
        # (None, -1, None) for an object measured small
        self._known: dict[int, tuple[Any, int, pickle.PickleBuffer | None]] = {}
        self._tokens = itertools.count()
        self._sharing = False

    def note(self, columns: list) -> bool:
        """Count the argument objects of a batch; measure those seen in a second task. Returns
        whether the batch is plain: importable functions and scalar arguments only (nothing to
        share, and nothing cloudpickle would write differently from the C pickler)."""
        batch_is_plain = True
        for column in columns:
            if type(column) is ItemsGroup:
                # A map chunk: each item is one task's own, never shared; cloudpickle writes the
                # few chunks of a map (checking each item's type here would cost more).
                batch_is_plain = False
                continue
            function, args_list, kwargs_list = column
            plain = _PLAIN.issuperset(map(type, itertools.chain.from_iterable(args_list)))
            if plain and kwargs_list is None:
                # The common case of small tasks: numbers and strings only, at C speed.
                batch_is_plain = batch_is_plain and pickles_by_reference(function)
                continue
            batch_is_plain = False
            if self._threshold is None:
                continue
            values: list[Any] = list(itertools.chain.from_iterable(args_list))
            if kwargs_list is not None:
                values += itertools.chain.from_iterable(kwargs.values() for kwargs in kwargs_list)
            for value in values:
                if type(value) in _PLAIN or id(value) in self._known or _has_buffers(value):
                    continue
                seen = self._seen.get(id(value), 0) + 1
                self._seen[id(value)] = seen
                if seen >= 2 or _looks_large(value):
                    self._measure(value)
        return batch_is_plain

    def _measure(self, value: Any) -> None:
        try:
            data = _cloudpickle().dumps(value, protocol=PROTOCOL)
        except Exception:
            data = b""
        if self._threshold is not None and len(data) > self._threshold:
            self._known[id(value)] = (value, next(self._tokens), pickle.PickleBuffer(data))
            self._sharing = True
        else:
            # Small: not kept alive (an id reused by another object then only misses a share).
            self._known[id(value)] = (None, -1, None)

    def dumps(self, obj: Any, plain: bool = False) -> tuple[bytes, list[pickle.PickleBuffer]]:
        """``obj`` pickled (cloudpickle, protocol 5, large buffers out of band), each large
        shared object in it replaced by its persistent id. ``plain``: ``note`` found the batch
        plain (the C pickler alone writes it)."""
        if plain:
            data = dumps_plain(obj)
            if data is not None:
                return data, []
        if not self._sharing:
            # No shared object yet: the plain pickler (a persistent_id hook costs a Python call
            # per pickled object).
            return dumps_with_buffers(obj, self._threshold)
        buffers, callback = _collector(self._threshold)
        out = io.BytesIO()
        pickler = _pickler_class()(out, protocol=PROTOCOL, buffer_callback=callback)
        pickler.known = self._known
        pickler.session = self._session
        pickler.dump(obj)
        return out.getvalue(), buffers


def _has_buffers(value: Any) -> bool:
    """Arrays and other buffer objects travel out of band already (placed once per identity,
    checked unchanged across calls): not shared objects."""
    return isinstance(value, (bytearray, memoryview)) or hasattr(type(value), "__array_interface__")


def _looks_large(value: Any) -> bool:
    """A container big enough to measure at first sight (so that it is pickled only once)."""
    return type(value) in _CONTAINERS and len(value) >= 1000


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


@functools.cache
def _pickler_class() -> type:
    """cloudpickle's pickler, replacing shared objects by persistent ids (made on first use:
    workers, which only load, never import cloudpickle for it)."""

    class Pickler(_cloudpickle().CloudPickler):  # type: ignore[misc]
        known: dict[int, tuple[Any, int, pickle.PickleBuffer | None]]
        session: int

        def persistent_id(self, obj: Any) -> Any:
            entry = self.known.get(id(obj))
            if entry is None or entry[2] is None or entry[0] is not obj:
                return None
            # The pickle rides as a PickleBuffer: out of band, in shared memory, placed once.
            return (TAG, self.session, entry[1], entry[2])

    return Pickler


class Unpickler(pickle.Unpickler):
    """A worker's unpickler of batches: resolves shared objects."""

    def persistent_load(self, pid: Any) -> Any:
        return persistent_load(pid)


#: In a worker: session -> token -> the object, unpickled once.
_CACHE: dict[int, dict[int, Any]] = {}


def persistent_load(pid: Any) -> Any:
    """Resolve a shared object's persistent id in a worker (see the module docs)."""
    if not (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == TAG):
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    _, session, token, data = pid
    objects = _CACHE.get(session)
    if objects is None:
        _CACHE.clear()  # a new call: the previous call's objects go
        objects = _CACHE[session] = {}
    if token not in objects:
        objects[token] = pickle.loads(data)
    return objects[token]
