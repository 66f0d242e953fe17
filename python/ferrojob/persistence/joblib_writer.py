"""Writing joblib's own file format (``dump(..., format="joblib")``), for consumers that run
plain joblib: ``joblib.load`` reads these files, and so does ferrojob's ``load``.

joblib's format (since 0.10) is a pickle in which every numpy array is replaced by a
``joblib.numpy_pickle.NumpyArrayWrapper`` object (its class, shape, order, dtype, whether it may
be memory-mapped, and the alignment of its data), and the array's bytes follow that object
directly in the file, outside the pickle's opcodes: a padding-length byte and padding up to a
multiple of 16 bytes (when the file can tell its position), then the data in the array's order;
an array of Python objects is pickled there instead. Compressed, the whole file goes through one
codec (zlib by default, or gzip, bz2, xz, lzma, lz4), as joblib writes it.

joblib is not imported: the wrapper is written as the opcodes that name joblib's class.

Example::

    >>> import numpy as np, os, tempfile
    >>> from ferrojob import dump, load
    >>> path = os.path.join(tempfile.mkdtemp(), "data.joblib")
    >>> dump({"a": np.arange(3)}, path, format="joblib")
    [...]
    >>> load(path)["a"]
    array([0, 1, 2])
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import pickle
import zlib
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidParameterError, compose_message
from .options import CODECS

#: joblib's codecs for a file compressed as a whole, and the file name endings that pick them.
JOBLIB_CODECS = {"zlib": ".z", "gzip": ".gz", "bz2": ".bz2", "lzma": ".lzma", "xz": ".xz", "lz4": ".lz4"}
#: The level when none is given (joblib's compressors default to 3).
_DEFAULT_LEVEL = 3
#: joblib aligns array data to this many bytes, so that a memory-mapped array is aligned.
_ALIGNMENT = 16
#: Array data is written this many bytes at a time (as joblib: the Python loop stays cheap).
_CHUNK = 16 << 20

assert set(JOBLIB_CODECS) <= set(CODECS) | {"lz4"}


def joblib_compression(compress: Any, filename: str) -> tuple[str, int] | None:
    """``compress`` (and a file name's ending) read by joblib's rules: ``None`` for no
    compression, else ``(codec, level)``. An integer is zlib's level and True zlib's default; a
    codec's name is that codec at its default level; unless ``(codec, level)`` names the codec,
    a known ending picks it (and then level 0 means its default level, not "none")."""
    if isinstance(compress, str):
        compress = (compress, None)
    if isinstance(compress, tuple):
        if len(compress) != 2:
            raise _bad(compress, "give (codec, level), e.g. ('gzip', 3)")
        (codec, level), explicit = compress, True
    else:
        codec, level, explicit = "zlib", None if compress is True else compress, False
    if codec not in JOBLIB_CODECS:
        raise _bad(compress, f"joblib's codecs are {', '.join(repr(c) for c in JOBLIB_CODECS)}")
    if level is not None and level is not False and (isinstance(level, bool) or level not in range(10)):
        raise _bad(compress, "a level goes from 0 to 9")
    if not explicit and filename:
        by_name = next((name for name, ending in JOBLIB_CODECS.items() if filename.endswith(ending)), None)
        if by_name is not None:
            codec = by_name
            if level == 0 or level is False:
                level = None
    if level == 0 or level is False:
        return None
    return codec, _DEFAULT_LEVEL if level is None else int(level)


def _bad(compress: Any, help_line: str) -> InvalidParameterError:
    return InvalidParameterError(
        compose_message(f"compress={compress!r} is not a compression joblib's format has.", help_line),
        code="FJ201",
    )


def write_joblib(value: Any, target: Any, compression: tuple[str, int] | None, protocol: int | None) -> None:
    """Write ``value`` in joblib's format into ``target`` (a binary file object)."""
    with _compressed(target, compression) as stream:
        protocol = pickle.DEFAULT_PROTOCOL if protocol is None else protocol
        _JoblibPickler(stream, protocol, mappable=compression is None).dump(value)


@contextlib.contextmanager
def _compressed(target: Any, compression: tuple[str, int] | None) -> Iterator[Any]:
    """``target`` itself, or a file object that compresses what is written into ``target``."""
    if compression is None:
        yield target
        return
    codec, level = compression
    stream: Any
    if codec == "zlib":
        stream = _ZlibWriter(target, level)
    elif codec == "gzip":
        stream = gzip.GzipFile(fileobj=target, mode="wb", compresslevel=level, mtime=0)
    elif codec == "bz2":
        stream = bz2.BZ2File(target, mode="wb", compresslevel=max(level, 1))
    elif codec in ("xz", "lzma"):
        kind = lzma.FORMAT_XZ if codec == "xz" else lzma.FORMAT_ALONE
        stream = lzma.LZMAFile(target, mode="wb", format=kind, preset=level)
    else:
        try:
            import lz4.frame  # type: ignore[import-not-found]
        except ImportError:
            raise InvalidParameterError(
                compose_message("joblib's lz4 files need the lz4 package.", "pip install lz4"), code="FJ201"
            ) from None
        stream = lz4.frame.LZ4FrameFile(target, mode="wb", compression_level=level)
    with stream:
        yield stream


class _ZlibWriter(io.RawIOBase):
    """A raw zlib stream written into ``target`` (joblib's ``.z`` files): compresses as it is
    written, and knows its uncompressed position (joblib aligns arrays by it)."""

    def __init__(self, target: Any, level: int) -> None:
        self._target = target
        self._compressor = zlib.compressobj(level)
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._target.write(self._compressor.compress(view))
        self._position += len(view)
        return len(view)

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._target.write(self._compressor.flush())
        super().close()


#: The pure-Python pickler (its ``save`` can be overridden per object; not in the type stubs).
_PurePickler: Any = pickle._Pickler  # type: ignore[attr-defined]


class _JoblibPickler(_PurePickler):
    """The pure-Python pickler, with numpy arrays written as joblib writes them: the wrapper's
    opcodes, then the array's bytes straight into the file (the C pickler cannot interleave)."""

    def __init__(self, stream: Any, protocol: int, mappable: bool) -> None:
        super().__init__(stream, protocol=protocol)
        self._stream = stream
        self._mappable = mappable
        numpy: Any
        try:
            import numpy
        except ImportError:
            numpy = None
        self._array_types = () if numpy is None else (numpy.ndarray, numpy.matrix, numpy.memmap)
        self._numpy = numpy
        try:
            stream.tell()
            self._alignment: int | None = _ALIGNMENT
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._alignment = None  # a stream that cannot tell: no alignment, as joblib

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) not in self._array_types:
            super().save(obj, save_persistent_id)
            return
        array = self._numpy.asanyarray(obj) if type(obj) is self._numpy.memmap else obj
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        state = {
            "subclass": type(array),
            "shape": array.shape,
            "order": order,
            "dtype": array.dtype,
            "allow_mmap": self._mappable and not array.dtype.hasobject,
        }
        if self._alignment is not None and not array.dtype.hasobject:
            state["numpy_array_alignment_bytes"] = self._alignment
        self._save_wrapper(state)
        self._write_array(array, order, state)

    def _save_wrapper(self, state: dict[str, Any]) -> None:
        """The opcodes of ``NumpyArrayWrapper`` with ``state``, as pickle writes an object of a
        class reduced by ``copyreg.__newobj__`` (NEWOBJ, then BUILD)."""
        if self.proto >= 4:
            self.save("joblib.numpy_pickle")
            self.save("NumpyArrayWrapper")
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + b"joblib.numpy_pickle\nNumpyArrayWrapper\n")
        self.save(())
        self.write(pickle.NEWOBJ)
        self.save(state)
        self.write(pickle.BUILD)
        if self.proto >= 4:
            # The wrapper's opcodes must reach the file before the array's bytes do.
            self.framer.commit_frame(force=True)

    def _write_array(self, array: Any, order: str, state: dict[str, Any]) -> None:
        stream = self._stream
        if array.dtype.hasobject:
            pickle.dump(array, stream, protocol=5)
            return
        alignment = state.get("numpy_array_alignment_bytes")
        if alignment is not None:
            padding = alignment - (stream.tell() + 1) % alignment
            stream.write(bytes([padding]) + b"\xff" * padding)
        plain = self._numpy.asarray(array)  # a matrix's data, without its 2-d reshaping rules
        contiguous = self._numpy.ascontiguousarray(plain if order == "C" else plain.T)
        data = contiguous.reshape(-1).view(self._numpy.uint8).data if contiguous.size else memoryview(b"")
        for start in range(0, len(data), _CHUNK):
            stream.write(data[start : start + _CHUNK])


def dump_joblib_path(value: Any, path: str, compress: Any, protocol: int | None) -> list[str]:
    """``dump(value, path, format="joblib")``: written to a temporary sibling, then renamed into
    place, so that a reader never sees half a file."""
    compression = joblib_compression(compress, path)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write_joblib(value, handle, compression, protocol)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return [path]
