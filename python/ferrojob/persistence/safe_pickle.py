"""Data-only unpickling: what ``load(..., allow_pickle=False)`` runs on a file it does not trust.

A pickle is a program; this module lets it build plain data and nothing else:

- scalars, strings, bytes, and the containers ``list``, ``tuple``, ``dict``, ``set``,
  ``frozenset`` (pickle's own opcodes), plus ``complex``, ``slice`` and ``bytearray`` (from bytes,
  never from a size);
- numpy arrays and scalars of canonical dtypes: bool, integers, floats, complex, fixed-size
  bytes/str/void and datetime/timedelta with a unit, in either byte order.

Every numpy object is rebuilt here from checked parts, never by numpy from pickled state: a dtype
from its descriptor (``"f8"``, ``"U5"``) and byte order, after checking that the pickled state is
exactly that dtype's own (so no flags, fields or sub-arrays ride along), and an array from a
buffer whose length must equal shape x itemsize. Object arrays, structured dtypes and every other
global are refused with ``RefusedContentError``; inconsistent data raises ``DamagedFileError``.

Objects that pickle's ``BUILD`` opcode completes (dtypes, arrays) are created as placeholders and
swapped for the real objects in one pass over the result, so numpy never sees a pickled state.
"""

from __future__ import annotations

import io
import operator
import pickle
import pickletools
import re
from typing import Any

from ..errors import DamagedFileError, RefusedContentError, compose_message

_NUMPY_ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
#: Descriptors numpy writes for data dtypes: kind letter and item size in bytes.
_DESCRIPTOR = re.compile(r"(?:b1|[iu][1248]|f(?:2|4|8|16)|c(?:8|16|32)|[SUV][1-9][0-9]{0,8}|[Mm]8)")
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_DATETIME_UNITS = frozenset({"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"})


def loads(data: bytes, buffers: list[Any]) -> Any:
    """Unpickle ``data`` (with its out-of-band ``buffers``) as data only (see the module docs)."""
    _check_lengths(data)
    unpickler = _DataOnlyUnpickler(io.BytesIO(data), buffers=buffers)
    try:
        value = unpickler.load()
        if unpickler.placeholders:
            value = _Resolver().resolve(value)
    except (RefusedContentError, DamagedFileError):
        raise
    except RecursionError as error:
        raise DamagedFileError("the file's data is nested too deeply to load", code="FJ401") from error
    except pickle.UnpicklingError as error:
        raise DamagedFileError(f"the file's pickle is damaged: {error}", code="FJ401") from error
    except (ValueError, TypeError, EOFError, AttributeError, IndexError, KeyError, OverflowError) as error:
        raise DamagedFileError(
            f"the file's data is malformed ({type(error).__name__}: {error})", code="FJ401"
        ) from error
    return value


def _check_lengths(data: bytes) -> None:
    """Read every opcode once, without building anything: CPython's unpickler allocates the
    length a bytes or str opcode declares before reading it, and a memo table as large as the
    largest memo index, so a few bytes could claim gigabytes. Here each declared length is
    checked against the bytes that follow, and each memo index against the pickle's size."""
    try:
        for opcode, argument, position in pickletools.genops(data):
            # A memo index sizes the unpickler's memo table: one past the pickle's length is
            # more than any real pickle needs (each entry costs at least one opcode byte).
            if opcode.name in _MEMO_PUTS and isinstance(argument, int) and argument > (position or 0):
                raise ValueError(f"memo index {argument} at byte {position}")
    except ValueError as error:
        raise DamagedFileError(f"the file's pickle is damaged: {error}", code="FJ401") from error


def _refuse(what: str) -> RefusedContentError:
    return RefusedContentError(
        compose_message(
            f"load(..., allow_pickle=False) refuses {what}: the file holds more than numpy arrays "
            "of plain dtypes and plain containers.",
            "load it with allow_pickle=True only if you trust where it comes from",
        ),
        code="FJ403",
    )


def _damaged(reason: str) -> DamagedFileError:
    return DamagedFileError(f"the file's data is malformed: {reason}", code="FJ401")


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` inside the pickle: only ``_reconstruct`` accepts it (numpy's
    own constructor would build arrays from a size or over an arbitrary buffer and offset)."""

    __slots__ = ()


_NDARRAY = _NdarrayClass()


class _Placeholder:
    """A numpy object under construction. Every numpy object enters the result as one, so that
    pickle's BUILD opcode (``__setstate__``) never reaches numpy with a state from the file."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __setstate__(self, state: Any) -> None:
        raise _refuse("pickled state applied to a numpy object")

    def resolve(self) -> Any:
        if self.value is None:
            raise _damaged("a numpy object is missing its state")
        return self.value


class _PendingDtype(_Placeholder):
    """A dtype named by its descriptor, completed by BUILD with the dtype's state."""

    __slots__ = ("descriptor",)

    def __init__(self, descriptor: Any, align: Any = False, copy: Any = True) -> None:
        super().__init__()
        if type(align) is not bool or type(copy) is not bool:
            raise _damaged("a dtype's arguments are not numpy's")
        self.descriptor = descriptor

    def __setstate__(self, state: Any) -> None:
        if self.value is not None:
            raise _damaged("a dtype's state is given twice")
        self.value = _canonical_dtype(self.descriptor, state)

    def resolve(self) -> Any:
        if self.value is None:
            self.value = _canonical_dtype(self.descriptor, None)
        return self.value


class _PendingArray(_Placeholder):
    """An array from ``_reconstruct``, completed by BUILD with ``(version, shape, dtype,
    is_fortran, data)``."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if self.value is not None:
            raise _damaged("an array's state is given twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise _damaged("an array's state is not numpy's")
        _, shape, dtype, is_fortran, data = state
        if isinstance(data, list):
            raise _refuse("an object array")
        if type(is_fortran) is not bool:
            raise _damaged("an array's order flag is not a bool")
        self.value = _array(data, _dtype(dtype), shape, "F" if is_fortran else "C", copy=True)


def _numpy() -> Any:
    import numpy

    return numpy


def _canonical_dtype(descriptor: Any, state: Any) -> Any:
    np = _numpy()
    if not isinstance(descriptor, str):
        raise _damaged("a dtype descriptor is not a string")
    if descriptor in ("O", "O4", "O8"):
        raise _refuse("an object dtype (arrays of Python objects)")
    if not _DESCRIPTOR.fullmatch(descriptor):
        raise _refuse(f"the dtype {descriptor!r} (only plain numeric, bool, bytes and str dtypes)")
    if state is None:
        return np.dtype(descriptor)
    if not (isinstance(state, tuple) and len(state) >= 8 and isinstance(state[1], str)):
        raise _damaged(f"the state of a {descriptor!r} dtype is not numpy's")
    order = state[1]
    if order not in ("<", ">", "|", "="):
        raise _damaged(f"the byte order {order!r} of a dtype")
    name = descriptor
    if descriptor in ("M8", "m8"):
        name = f"{descriptor}[{_datetime_unit(state)}]"
    canonical = np.dtype(name)
    if order in "<>" and canonical.itemsize > 1 and canonical.kind not in "SV":
        canonical = canonical.newbyteorder(order)
    # The pickled state must be exactly the canonical dtype's own: anything else (flags that
    # claim references, fields, a sub-array, metadata) is not a plain dtype.
    if canonical.__reduce__()[2] != state:
        raise _refuse(f"a {descriptor!r} dtype with extra state (fields, flags or metadata)")
    return canonical


def _datetime_unit(state: tuple) -> str:
    try:
        unit, count, _, _ = state[8][1]
        unit = unit.decode("ascii")
    except (IndexError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
        raise _damaged("a datetime dtype without its unit") from None
    if unit not in _DATETIME_UNITS or type(count) is not int or not 1 <= count < 2**31:
        raise _damaged(f"the datetime unit {unit!r} x {count!r}")
    return unit if count == 1 else f"{count}{unit}"


def _dtype(value: Any) -> Any:
    if isinstance(value, _PendingDtype):
        return value.resolve()
    raise _damaged("an array's dtype is not a dtype")


def _array(data: Any, dtype: Any, shape: Any, order: Any, copy: bool = False) -> Any:
    np = _numpy()
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise _damaged(f"an array's shape {shape!r}")
    if order not in ("C", "F"):
        raise _damaged(f"an array's order {order!r}")
    if dtype.itemsize == 0:
        raise _refuse("an unsized dtype")
    try:
        view = memoryview(data)
    except TypeError:
        raise _damaged("an array's data is not bytes") from None
    expected = dtype.itemsize
    for n in shape:  # Python ints: no overflow
        expected *= n
    if view.nbytes != expected:
        raise _damaged(
            f"an array of shape {shape} and dtype {dtype} needs {expected} bytes, the file has {view.nbytes}"
        )
    if expected == 0:
        return np.empty(shape, dtype=dtype, order=order)
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order=order)
    return array.copy(order="K") if copy else array


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> _Placeholder:
    return _Placeholder(_array(data, _dtype(dtype), shape, order))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _PendingArray:
    if cls is not _NDARRAY:
        raise _refuse("an array of a subclass of numpy.ndarray")
    return _PendingArray()


def _scalar(dtype: Any, data: Any = None) -> _Placeholder:
    dtype = _dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _damaged(f"a numpy scalar of dtype {dtype} whose data is not {dtype.itemsize} bytes")
    return _Placeholder(_numpy().frombuffer(data, dtype=dtype)[0])


def _bytearray(*args: Any) -> bytearray:
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
        return bytearray(args[0], args[1])
    # bytearray(n) would allocate n zeroed bytes: memory a file of a few bytes cannot justify.
    raise _refuse("bytearray(...) of anything but bytes")


def _complex(*args: Any) -> complex:
    if not all(isinstance(arg, (int, float)) for arg in args):
        raise _damaged("complex(...) of something else than numbers")
    return complex(*args)


def _set(*args: Any) -> set:
    return set(*_plain_iterable(args))


def _frozenset(*args: Any) -> frozenset:
    return frozenset(*_plain_iterable(args))


def _plain_iterable(args: tuple) -> tuple:
    if len(args) > 1 or (args and type(args[0]) not in (list, tuple, set, frozenset)):
        raise _damaged("set(...) of something else than a list")
    return args


_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PendingDtype,
    ("builtins", "complex"): _complex,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "slice"): slice,
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_ARRAY_MODULES},
    **{(module, "scalar"): _scalar for module in _NUMPY_ARRAY_MODULES},
    **{(module, "_frombuffer"): _frombuffer for module in _NUMPY_NUMERIC_MODULES},
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Resolves globals to this module's checked constructors; refuses every other global."""

    def __init__(self, file: io.BytesIO, buffers: list[Any]) -> None:
        super().__init__(file, buffers=buffers)
        self.placeholders = False

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise _refuse(f"{module}.{name}")
        if module != "builtins":
            self.placeholders = True
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("persistent references")


class _Resolver:
    """Swaps placeholders for the objects they stand for, through the plain containers safe
    mode can make (lists, dicts and sets in place, so shared and cyclic references stay)."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}

    def resolve(self, value: Any) -> Any:
        kind = type(value)
        if isinstance(value, _Placeholder):
            return value.resolve()
        if value is _NDARRAY:
            return _numpy().ndarray
        if kind not in (list, dict, set, tuple, frozenset, slice):
            return value
        key = id(value)
        if key in self.done:
            return self.done[key]
        self.done[key] = value
        if kind is list:
            value[:] = [self.resolve(item) for item in value]
        elif kind is dict:
            items = [(self.resolve(k), self.resolve(v)) for k, v in value.items()]
            value.clear()
            value.update(items)
        elif kind is set:
            items = [self.resolve(item) for item in value]
            value.clear()
            value.update(items)
        else:
            parts = [value.start, value.stop, value.step] if kind is slice else list(value)
            resolved = [self.resolve(part) for part in parts]
            if any(map(operator.is_not, resolved, parts)):
                value = slice(*resolved) if kind is slice else kind(resolved)
                self.done[key] = value
        return value
