"""Large arguments sent once per call: a model, a dict, a DataFrame passed to many tasks.

Within one call, an argument that is the same Python object (identity) in several tasks and
pickles to more than ``max_nbytes`` is pickled once. A batch is then two pickles in one stream:
a header of the call's shared objects (a marker each: its token, and its pickle as an
out-of-band buffer, placed in shared memory once per call by identity), and the body, pickled with
each shared object in the memo as the entry its marker loads as — so every task's reference to it
is a memo lookup, with no Python code per task. A worker unpickles each shared object once and
keeps it by token until the next call's objects arrive (``load_job``). So a call of 20,000 tasks
on one object costs what 200 do, plus the tasks.

Only objects seen in at least two tasks, or containers of 1,000 items or more, are measured
(their pickle is what measuring costs), and plain scalars never are.
"""

from __future__ import annotations

import collections
import io
import itertools
import pickle
from typing import Any

from ._pickling import PROTOCOL, _collector, dumps_plain, dumps_with_buffers, pickles_by_reference
from ._tasks import ItemsGroup, JobBody

_SESSIONS = itertools.count(1)
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})


class SharedObjects:
    """The large objects of one call (a ``ProcessSession``), by identity."""

    def __init__(self, threshold: int | None) -> None:
        self._threshold = threshold
        self._session = next(_SESSIONS)
        self._seen: dict[int, int] = {}
        # ids already decided: measured (large or small) or travelling out of band
        self._known: set[int] = set()
        self._tokens = itertools.count()
        # id -> (token, pickle, the object) of the objects measured large: shared. The object is
        # kept alive here, so that its id stays its own for the whole call.
        self._shared: dict[int, tuple[int, pickle.PickleBuffer, Any]] = {}

    def note(self, columns: list) -> bool:
        """Count the argument objects of a batch; measure those seen in a second task. Returns
        whether the batch is plain: importable functions and scalar arguments only (nothing to
        share, and nothing cloudpickle would write differently from the C pickler)."""
        batch_is_plain = True
        for column in columns:
            if type(column) is ItemsGroup:
                # A map chunk: each item is one task's own, never shared. A range's chunk is
                # plain when its function is; a list's is left to cloudpickle (checking each
                # item's type here would cost more than cloudpickle's own overhead).
                batch_is_plain = (
                    batch_is_plain and type(column.items) is range and pickles_by_reference(column.function)
                )
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
            self._count([value for value in values if type(value) not in _PLAIN])
        return batch_is_plain

    def _count(self, values: list[Any]) -> None:
        """Count these argument objects (by identity, at C speed); measure each one met in a
        second task, or large at first sight."""
        counts = collections.Counter(map(id, values))
        new = counts.keys() - self._known
        if not new:
            return
        objects = dict(zip(map(id, values), values, strict=True))
        for key in new:
            value = objects[key]
            if _has_buffers(value):
                self._known.add(key)  # travels out of band already
                continue
            seen = self._seen[key] = self._seen.get(key, 0) + counts[key]
            if seen >= 2 or _looks_large(value):
                self._measure(value)

    def _measure(self, value: Any) -> None:
        try:
            data = _cloudpickle().dumps(value, protocol=PROTOCOL)
        except Exception:
            data = b""
        # A small object is not kept alive (an id reused by another object then only misses a share).
        self._known.add(id(value))
        if self._threshold is not None and len(data) > self._threshold:
            self._shared[id(value)] = (next(self._tokens), pickle.PickleBuffer(data), value)

    def dumps(self, columns: list, collect: bool, plain: bool = False) -> tuple[bytes, list[pickle.PickleBuffer]]:
        """A batch's ``JobBody`` pickled (cloudpickle, protocol 5, large buffers out of band),
        after a header of the call's shared objects when there are any (see the module docs).
        ``plain``: ``note`` found the batch plain (the C pickler alone writes it)."""
        body = tuple(JobBody(columns, collect))
        if plain:
            data = dumps_plain(body)
            if data is not None:
                return data, []
        if not self._shared:
            return dumps_with_buffers(body, self._threshold)
        buffers, callback = _collector(self._threshold)  # shared pickles are all above it
        out = io.BytesIO()
        pickler = _cloudpickle().Pickler(out, protocol=PROTOCOL, buffer_callback=callback)
        markers = [(_Marker(self._session, token, data), value) for token, data, value in self._shared.values()]
        pickler.dump((HEADER, [marker for marker, _ in markers]))
        # Each shared object is now the memo entry its marker loads as (kept alive by `_shared`,
        # so its id is its own): the body refers to it by that entry.
        memo = pickler.memo.copy()
        for marker, value in markers:
            memo[id(value)] = (memo[id(marker)][0], value)
        pickler.memo = memo
        pickler.dump(body)
        return out.getvalue(), buffers


class _Marker:
    """In a batch's header: a shared object, as its call's session, its token and its pickle
    (an out-of-band buffer, placed once per call)."""

    __slots__ = ("data", "session", "token")

    def __init__(self, session: int, token: int, data: pickle.PickleBuffer) -> None:
        self.session = session
        self.token = token
        self.data = data

    def __reduce__(self) -> tuple:
        return shared_object, (self.session, self.token, self.data)


#: The first element of a batch's header (a ``JobBody`` starts with a list, never this).
HEADER = "ferrojob-shared-objects"


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


#: In a worker: session -> token -> the object, unpickled once.
_CACHE: dict[int, dict[int, Any]] = {}


def load_job(payload: bytes, buffers: list[Any]) -> Any:
    """In a worker: a batch's ``JobBody`` tuple, its shared objects resolved (module docs)."""
    unpickler = pickle.Unpickler(io.BytesIO(payload), buffers=buffers)
    first = unpickler.load()
    if type(first) is tuple and len(first) == 2 and first[0] == HEADER:
        return unpickler.load()  # the body, its shared objects in the memo the header left
    return first


def shared_object(session: int, token: int, data: Any) -> Any:
    """In a worker: the shared object ``token`` of call ``session``, unpickled from ``data`` the
    first time this worker meets it."""
    objects = _CACHE.get(session)
    if objects is None:
        _CACHE.clear()  # a new call: the previous call's objects go
        objects = _CACHE[session] = {}
    if token not in objects:
        objects[token] = pickle.loads(data)
    return objects[token]
