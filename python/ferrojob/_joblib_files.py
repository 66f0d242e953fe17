"""Reading files written by ``joblib.dump`` (joblib >= 0.10), without importing joblib.

joblib's format is one pickle stream in which each numpy array is a ``NumpyArrayWrapper``
(dtype, shape, order) immediately followed, inside the stream, by the array's raw bytes (after
a padding byte and padding since joblib 1.2, so that the bytes are aligned); object arrays are a
nested pickle there instead. The whole stream may be compressed (zlib, gzip, bz2, lzma, xz or
lz4, told apart by their magic bytes). An uncompressed file can be memory-mapped: each array is
then a ``numpy.memmap`` of the file at its offset.

This is pickle: it runs code. ``load`` reads joblib files only with ``allow_pickle=True``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

from .errors import NotADumpFileError, compose_message

_PREFIXES = (
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"\xfd\x37\x7a\x58\x5a", "xz"),
    (b"\x5d\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x78", "zlib"),
)
#: Bytes read at a time when an array is read from a (decompressing) stream.
_CHUNK = 16 << 20


def _compressor(start: bytes) -> str | None:
    for prefix, name in _PREFIXES:
        if start.startswith(prefix):
            return name
    return None


def _decompressing(handle: BinaryIO, name: str, path: str) -> BinaryIO:
    import bz2
    import gzip
    import lzma
    import zlib

    if name == "gzip":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    if name == "bz2":
        return bz2.BZ2File(handle, mode="rb")  # type: ignore[return-value]
    if name in ("xz", "lzma"):
        return lzma.LZMAFile(handle, mode="rb")  # type: ignore[return-value]
    if name == "zlib":
        return io.BytesIO(zlib.decompress(handle.read()))
    try:
        import lz4.frame  # type: ignore[import-not-found]
    except ImportError:
        raise NotADumpFileError(
            compose_message(
                f"{path} is a joblib dump compressed with lz4, and the lz4 package is not installed.",
                "pip install lz4 to read it",
            ),
            code="FJ402",
        ) from None
    return lz4.frame.LZ4FrameFile(handle, mode="rb")  # type: ignore[no-any-return]


class _ArrayWrapper:
    """Stands for ``joblib.numpy_pickle.NumpyArrayWrapper``: its state says what array follows."""

    subclass: Any
    shape: tuple
    order: str
    dtype: Any
    allow_mmap: bool

    def read(self, unpickler: _JoblibUnpickler) -> Any:
        import numpy

        np: Any = numpy
        handle: Any = unpickler.handle
        if self.dtype.hasobject:
            return pickle.load(handle)
        if "numpy_array_alignment_bytes" in self.__dict__:  # joblib >= 1.2: a padding byte, padding
            padding = handle.read(1)
            handle.read(int.from_bytes(padding, "little"))
        count = int(np.multiply.reduce(self.shape)) if self.shape else 1
        if unpickler.mmap_mode is not None and self.allow_mmap:
            offset = handle.tell()
            array = np.memmap(
                unpickler.path, dtype=self.dtype, mode=unpickler.mmap_mode, offset=offset, shape=self.shape, order=self.order
            )
            handle.seek(offset + array.nbytes)
            return array
        array = np.empty(count, dtype=self.dtype)
        flat = array.view(np.uint8)
        done = 0
        while done < flat.size:
            got = handle.readinto(memoryview(flat[done : done + _CHUNK]))
            if not got:
                raise NotADumpFileError(f"{unpickler.path}: the joblib dump ends inside an array", code="FJ402")
            done += got
        if self.order == "F":
            array.shape = self.shape[::-1]
            array = array.transpose()
        else:
            array.shape = self.shape
        if unpickler.native_byte_order and not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        return array


# The pure-Python unpickler: its per-opcode ``dispatch`` table can be extended (the C one's cannot).
_PureUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class _JoblibUnpickler(_PureUnpickler):
    """The pure-Python unpickler, whose BUILD reads the array that follows each wrapper."""

    dispatch = _PureUnpickler.dispatch.copy()

    def __init__(self, handle: BinaryIO, path: str, mmap_mode: str | None, native_byte_order: bool) -> None:
        super().__init__(handle)
        self.handle = handle
        self.path = path
        self.mmap_mode = mmap_mode
        self.native_byte_order = native_byte_order

    def find_class(self, module: str, name: str) -> Any:
        if module == "joblib.numpy_pickle" and name == "NumpyArrayWrapper":
            return _ArrayWrapper
        if module == "joblib.numpy_pickle" and name == "NDArrayWrapper":
            raise NotADumpFileError(
                compose_message(
                    f"{self.path} was written by joblib < 0.10 (its arrays are in separate files).",
                    "read it once with joblib and dump it again: ferrojob.dump(joblib.load(path), new)",
                ),
                code="FJ402",
            )
        return super().find_class(module, name)

    def load_build(self) -> None:
        super().load_build()
        if isinstance(self.stack[-1], _ArrayWrapper):
            wrapper = self.stack.pop()
            self.stack.append(wrapper.read(self))

    dispatch[pickle.BUILD[0]] = load_build


def load_joblib_file(path: str, mmap_mode: str | None, native: bool) -> Any:
    """The object in a file written by ``joblib.dump`` (see the module docs); ``native``: turn
    big-endian arrays read into memory to this machine's byte order."""
    from .persistence import memmap_mode, warn_not_mapped

    with open(path, "rb") as raw:
        name = _compressor(raw.read(8))
        raw.seek(0)
        if name is None:
            return _JoblibUnpickler(raw, path, memmap_mode(mmap_mode), native).load()
        if mmap_mode is not None:
            warn_not_mapped(f"{path} is compressed ({name})", mmap_mode, stacklevel=5)  # the caller of load
        with _decompressing(raw, name, path) as stream:
            return _JoblibUnpickler(stream, path, None, native).load()
