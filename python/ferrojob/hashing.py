"""``hash``: a content hash of any picklable object, numpy-aware, computed in Rust.

The object's structure is pickled into the hasher; numpy arrays contribute their dtype, shape
and memory order, and their data is hashed directly (never pickled) on every core. Dicts and
sets hash the same whatever their order. The digest is stable across processes, runs and
machines of the same endianness.

Example::

    >>> from ferrojob import hash
    >>> hash({"a": 1, "b": [1, 2]}) == hash({"b": [1, 2], "a": 1})
    True
    >>> len(hash("text"))
    32
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
from typing import Any

from ._core import Hasher as _RustHasher
from .errors import InvalidParameterError, compose_message

__all__ = ["hash"]

RUST_HASHES = ("xxh3", "blake3")
HASHLIB_HASHES = ("md5", "sha1", "sha256")


class _HashlibHasher:
    """``hashlib``'s md5/sha1 behind the Rust hasher's interface (for joblib's ``hash_name``s)."""

    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)

    def update(self, data: Any) -> None:
        self._hash.update(data)

    def update_buffer(self, data: Any) -> None:
        view = memoryview(data)
        self._hash.update(view.nbytes.to_bytes(8, "little"))
        self._hash.update(view)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Sink(io.RawIOBase):
    """Where the pickler writes: straight into the hasher."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hasher.update(data)
        return len(data)


# The pure-Python pickler: its per-type `dispatch` table can be overridden (the C one's cannot).
_PurePickler: Any = pickle._Pickler  # type: ignore[attr-defined]


class _HashPickler(_PurePickler):
    """A pickler whose output is hashed, with numpy arrays and unordered containers canonical."""

    dispatch = _PurePickler.dispatch.copy()

    def __init__(self, hasher: Any, hash_name: str, coerce_mmap: bool) -> None:
        super().__init__(_Sink(hasher), protocol=4)
        self.hasher = hasher
        self.hash_name = hash_name
        self.coerce_mmap = coerce_mmap
        numpy = sys.modules.get("numpy")
        self._ndarray = numpy.ndarray if numpy is not None else None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if self._ndarray is not None:
            if isinstance(obj, self._ndarray) and not obj.dtype.hasobject:
                self._save_array(obj)
                return
            if isinstance(obj, sys.modules["numpy"].dtype):
                # Equal dtypes are often distinct objects: hash the value, never a memo reference.
                self.hasher.update(b"numpy.dtype")
                self.hasher.update_buffer(pickle.dumps(obj, protocol=4))
                return
        super().save(obj, save_persistent_id)

    def memoize(self, obj: Any) -> None:
        # Strings and bytes are values: the same text hashes the same whether it is one object
        # seen twice (a memo reference) or two equal objects (joblib's rule).
        if type(obj) in (str, bytes):
            return
        super().memoize(obj)

    def _save_array(self, array: Any) -> None:
        import numpy as np

        if array.flags.c_contiguous:
            data, order = array, "C"
        elif array.flags.f_contiguous:
            data, order = array.T, "F"
        else:
            data, order = np.ascontiguousarray(array), "C"
        cls = type(array)
        if cls is np.ndarray or (self.coerce_mmap and cls is np.memmap):
            kind = "ndarray"
        else:
            kind = f"{cls.__module__}.{cls.__qualname__}"
        # The description goes through the pickler (memo included); the data straight in.
        super().save((kind, array.dtype.descr if array.dtype.fields else array.dtype.str, array.shape, order))
        try:
            raw = memoryview(data).cast("B")
        except (TypeError, ValueError):
            raw = memoryview(data.tobytes())
        self.hasher.update_buffer(raw)

    def _sorted_by_hash(self, items: list[Any], key: Any) -> list[Any]:
        try:
            return sorted(items, key=key)
        except Exception:  # incomparable items (TypeError), or Decimal("NaN") (InvalidOperation)
            return sorted(items, key=lambda item: hash(key(item), self.hash_name))

    def save_dict(self, obj: dict) -> None:
        self.write(pickle.EMPTY_DICT if self.bin else pickle.MARK + pickle.DICT)
        self.memoize(obj)
        self._batch_setitems(iter(self._sorted_by_hash(list(obj.items()), lambda item: item[0])))

    def save_set(self, obj: set | frozenset) -> None:
        # A tagged, sorted list: the same for any insertion order.
        super().save((type(obj).__name__, self._sorted_by_hash(list(obj), lambda item: item)))

    dispatch[dict] = save_dict
    dispatch[set] = save_set
    dispatch[frozenset] = save_set


def _new_hasher(hash_name: str) -> Any:
    if hash_name in RUST_HASHES:
        return _RustHasher(hash_name)
    if hash_name in HASHLIB_HASHES:
        return _HashlibHasher(hash_name)
    raise InvalidParameterError(
        compose_message(
            f"hash_name={hash_name!r} is not a hash ferrojob computes.",
            "use 'xxh3' (the default, fastest), 'blake3' (cryptographic), or 'md5'/'sha1'/'sha256'",
        ),
        code="FJ201",
    )


def hash(obj: Any, hash_name: str = "xxh3", coerce_mmap: bool = False) -> str:
    """The hex digest of ``obj``'s content (joblib's ``hash``, on the Rust engine).

    ``hash_name``: "xxh3" (xxh3-128, default), "blake3", or joblib's "md5"/"sha1" (computed by
    hashlib). ``coerce_mmap``: hash ``np.memmap`` arrays like plain arrays.

    Example::

        >>> from ferrojob import hash
        >>> import numpy as np
        >>> hash(np.arange(3)) == hash(np.arange(3))
        True
    """
    hasher = _new_hasher(hash_name)
    pickler = _HashPickler(hasher, hash_name, coerce_mmap)
    try:
        pickler.dump(obj)
    except pickle.PicklingError as error:
        raise pickle.PicklingError(f"ferrojob.hash cannot hash {type(obj).__name__} objects: {error}") from error
    return hasher.hexdigest()
