"""Reading files written by ``joblib.dump``, without importing joblib.

joblib >= 0.10 writes one pickle stream in which each numpy array is a ``NumpyArrayWrapper``
(dtype, shape, order) immediately followed, inside the stream, by the array's raw bytes (after
a padding byte and padding since joblib 1.2, so that the bytes are aligned); object arrays are a
nested pickle there instead. The whole stream may be compressed (zlib, gzip, bz2, lzma, xz or
lz4, told apart by their magic bytes). An uncompressed file can be memory-mapped: each array is
then a ``numpy.memmap`` of the file at its offset.

joblib < 0.10 kept each array in a file of its own beside the pickle: a ``.npy`` file named by
an ``NDArrayWrapper``, or, compressed, a "Z-file" (``"ZF"``, the data's length in hex padded to
19 characters, then a zlib stream) named by a ``ZNDArrayWrapper``; the pickle itself was a
Z-file when compressed. They are read with the warning joblib gives for them.

This is pickle: it runs code. ``load`` reads joblib files only with ``allow_pickle=True``.
"""

from __future__ import annotations

import functools
import io
import lzma
import os
import pickle
import warnings
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

from .._caller import user_stacklevel
from ..errors import DamagedFileError, NotADumpFileError, compose_message
from .options import in_native_order, memmap_mode, warn_not_mapped
from .readers import Replay, read_up_to, warn_lost

_PREFIXES = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd\x37\x7a\x58\x5a", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    # zlib: 0x78, then a check byte for one of the four compression levels' flags
    (b"\x78\x01", "zlib"),
    (b"\x78\x5e", "zlib"),
    (b"\x78\x9c", "zlib"),
    (b"\x78\xda", "zlib"),
)
#: Bytes read at a time when an array is read from a (decompressing) stream.
_CHUNK = 16 << 20
#: How a Z-file of joblib < 0.10 starts, and the length of its header.
_ZFILE_PREFIX = b"ZF"
_ZFILE_HEADER = 2 + 19
#: joblib's word for files of joblib < 0.10 (kept as is: code may filter warnings by it).
_OLD_FORMAT = (
    "The file '{}' has been generated with a joblib version less than 0.10. Please regenerate this pickle file."
)
#: joblib >= 1.2 aligns the arrays of uncompressed files to this many bytes.
_ALIGNMENT = 16


def compressor(start: bytes) -> str | None:
    """The codec a joblib file starting with ``start`` is compressed with as a whole, if any."""
    if start.startswith(_ZFILE_PREFIX):
        return "zfile"
    for prefix, name in _PREFIXES:
        if start.startswith(prefix):
            return name
    return None


#: The first bytes of a member, for the codecs whose streams are a series of members.
_MEMBER_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}


class _Members(io.RawIOBase):
    """A compressed stream (zlib, gzip, bz2, xz, lzma, lz4), decompressed as it is read, one
    member at a time: it ends with its first member, unless ``continues`` is set, when a member
    that ends while more is asked for is followed by the next (a dump that says its length, and
    whose writer cut it into members on every core). What is read past the last member used is
    given back to ``handle`` (``give_back``), so a load leaves the stream right after its own
    dump. (Python's GzipFile, BZ2File, LZMAFile and LZ4FrameFile read every member that follows:
    the next dump's too.)"""

    def __init__(
        self, handle: Any, name: str, decompressor: Callable[[], Any], codec: str, limit: int | None = None
    ) -> None:
        self._handle = handle
        self.name = name
        self._codec = codec
        self._make = decompressor
        self._decompressor = decompressor()
        #: Read from ``handle`` and not yet fed (what a finished member left over).
        self._carry = b""
        self._pending = b""
        self._left = limit  # the length a Z-file declares: no more is produced
        self._given_back = False
        self.continues = False

    def readable(self) -> bool:
        return True

    def _input(self) -> bytes:
        """The next compressed bytes: what the decompressor holds back first (zlib gives it
        back as ``unconsumed_tail``; bz2, lzma and lz4 keep it and say ``needs_input``), then
        what an earlier member left over, then the handle's."""
        tail = getattr(self._decompressor, "unconsumed_tail", b"")
        if tail:
            return tail  # type: ignore[no-any-return]
        if not getattr(self._decompressor, "needs_input", True):
            return b""
        if self._carry:
            carried, self._carry = self._carry, b""
            return carried
        compressed = self._handle.read(_CHUNK)
        if not compressed:
            raise DamagedFileError(
                f"{self.name}: its {self._codec} compression is damaged or cut short (it ends early)",
                code="FJ401",
            )
        return compressed  # type: ignore[no-any-return]

    def _next_member(self) -> bool:
        """After a member's end: start the next one if the bytes that follow begin one."""
        self._carry = self._decompressor.unused_data + self._carry
        magic = _MEMBER_MAGIC.get(self._codec)
        if magic is None:
            return False  # zlib, lzma alone: one stream, no members
        if len(self._carry) < len(magic):
            self._carry += read_up_to(self._handle, len(magic) - len(self._carry))
        if not self._carry.startswith(magic):
            return False
        self._decompressor = self._make()
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and self._left != 0 and not self._given_back:
            if self._decompressor.eof:
                if self.continues and self._next_member():
                    continue
                # The end: what was read past it goes back to the handle.
                self._given_back = True
                leftover = self._carry if self.continues else self._decompressor.unused_data + self._carry
                give_back(self._handle, leftover, self.name)
                break
            compressed = self._input()
            wanted = len(view) if self._left is None else min(len(view), self._left)
            try:
                self._pending = self._decompressor.decompress(compressed, wanted)
            except (zlib.error, OSError, lzma.LZMAError, RuntimeError) as error:
                # What each codec raises for bad data (bz2: OSError, lz4: RuntimeError).
                raise DamagedFileError(
                    f"{self.name}: its {self._codec} compression is damaged or cut short ({error})", code="FJ401"
                ) from None
        got = min(len(view), len(self._pending))
        view[:got] = self._pending[:got]
        self._pending = self._pending[got:]
        if self._left is not None:
            self._left -= got
        return got


def continue_across_members(stream: Any, on: bool) -> None:
    """Let ``stream`` (as ``decompressing`` returns it) go on into the members that follow its
    current one when more is read (``on``), or end with the current member."""
    raw = getattr(stream, "raw", None)
    if isinstance(raw, _Members):
        raw.continues = on


def _zfile(handle: Any, path: str) -> BinaryIO:
    """The data of a Z-file of joblib < 0.10 (see the module docs), as a stream."""
    header = handle.read(_ZFILE_HEADER)
    try:
        length = int(header[len(_ZFILE_PREFIX) :], 16)
    except ValueError:
        raise DamagedFileError(f"{path}: the header of a joblib < 0.10 file is damaged", code="FJ401") from None
    start = handle.read(1)
    # Some versions wrote one more space after the length.
    member = _Members(Replay(b"" if start == b" " else start, handle), path, zlib.decompressobj, "zlib", length)
    return io.BufferedReader(member)


def give_back(handle: Any, unread: bytes, name: str) -> None:
    """Put ``unread`` (read from ``handle`` past the end of a compressed dump) back, so that the
    next load starts right after this one: by seeking back where the stream can, else in front
    of a ``Replay`` (whose owner warns if they stay there); a stream that can do neither loses
    them, and a warning says so."""
    if not unread:
        return
    if hasattr(handle, "give_back"):
        handle.give_back(unread)
    elif getattr(handle, "seekable", lambda: False)():
        handle.seek(-len(unread), io.SEEK_CUR)
    else:
        warn_lost(name, len(unread))


def decompressing(handle: Any, name: str, path: str) -> BinaryIO:
    """``handle``'s data decompressed with ``name`` (see ``compressor``), read as it is needed:
    one member, as joblib writes it; what follows it is the next dump's."""
    import bz2

    if name == "zfile":
        return _zfile(handle, path)
    decompressor: Callable[[], Any]
    if name == "gzip":
        decompressor = functools.partial(zlib.decompressobj, 31)
    elif name == "zlib":
        decompressor = zlib.decompressobj
    elif name == "bz2":
        decompressor = bz2.BZ2Decompressor
    elif name in ("xz", "lzma"):
        decompressor = functools.partial(lzma.LZMADecompressor, lzma.FORMAT_AUTO)
    else:
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
        decompressor = lz4.frame.LZ4FrameDecompressor
    return io.BufferedReader(_Members(handle, path, decompressor, name))


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
        aligned = "numpy_array_alignment_bytes" in self.__dict__
        if aligned:  # joblib >= 1.2: a padding byte, then that much padding
            padding = handle.read(1)
            handle.read(int.from_bytes(padding, "little"))
        count = int(np.multiply.reduce(self.shape)) if self.shape else 1
        if unpickler.mmap_mode is not None and self.allow_mmap:
            offset = handle.tell()
            array = np.memmap(
                unpickler.file,
                dtype=self.dtype,
                mode=unpickler.mmap_mode,
                offset=offset,
                shape=self.shape,
                order=self.order,
            )
            handle.seek(offset + array.nbytes)
            if not aligned and offset % _ALIGNMENT:
                warnings.warn(
                    f"the memmapped array at offset {offset} of {unpickler.name} is not aligned "
                    f"to {_ALIGNMENT} bytes (joblib < 1.2 wrote it): this may cause segmentation "
                    "faults in libraries such as BLAS or PyTorch. Dump it again to align it.",
                    stacklevel=user_stacklevel(pickle.__file__),
                )
            return array
        array = np.empty(count, dtype=self.dtype)
        flat = array.view(np.uint8)
        done = 0
        while done < flat.size:
            got = handle.readinto(memoryview(flat[done : done + _CHUNK]))
            if not got:
                raise DamagedFileError(
                    f"{unpickler.name}: truncated: the joblib dump ends inside an array", code="FJ401"
                )
            done += got
        if self.order == "F":
            array.shape = self.shape[::-1]
            array = array.transpose()
        else:
            array.shape = self.shape
        return unpickler.native(array)


class _ArrayFileWrapper:
    """Stands for ``joblib.numpy_pickle.NDArrayWrapper`` (joblib < 0.10): the array is in the
    ``.npy`` file its state names, beside the pickle."""

    filename: str
    subclass: Any

    def read(self, unpickler: _JoblibUnpickler) -> Any:
        import numpy as np

        mapped: Any = unpickler.mmap_mode if self.__dict__.get("allow_mmap", True) else None
        array = np.load(unpickler.beside(self.filename), mmap_mode=mapped, allow_pickle=True)
        if mapped is None:
            array = unpickler.native(array)
        if self.subclass not in (np.ndarray, np.memmap) and isinstance(self.subclass, type):
            array = array.view(self.subclass)  # np.matrix, for one
        return array


class _ZArrayFileWrapper:
    """Stands for ``joblib.numpy_pickle.ZNDArrayWrapper`` (joblib < 0.10): the array's bytes are
    in the Z-file its state names; ``init_args`` and ``state`` rebuild the array around them."""

    filename: str
    init_args: tuple
    state: tuple

    def read(self, unpickler: _JoblibUnpickler) -> Any:
        path = unpickler.beside(self.filename)
        with open(path, "rb") as raw, _zfile(raw, path) as data:
            payload = data.read()
        array = _reconstruct()(*self.init_args)
        array.__setstate__((*self.state, payload))
        return unpickler.native(array)


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct as reconstruct  # type: ignore[no-redef]
    return reconstruct


#: joblib's wrappers, and what stands for each here.
_WRAPPERS: dict[str, type] = {
    "NumpyArrayWrapper": _ArrayWrapper,
    "NDArrayWrapper": _ArrayFileWrapper,
    "ZNDArrayWrapper": _ZArrayFileWrapper,
}


# The pure-Python unpickler: its per-opcode ``dispatch`` table can be extended (the C one's cannot).
_PureUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class _JoblibUnpickler(_PureUnpickler):
    """The pure-Python unpickler, whose BUILD reads the array each wrapper stands for.

    ``name`` names the file or stream in messages; ``path``: the file (None for a stream: arrays
    kept in files beside it cannot be found); ``old_format``: the file is known to be from
    joblib < 0.10 (a Z-file), which is warned about."""

    dispatch = _PureUnpickler.dispatch.copy()

    def __init__(
        self,
        handle: Any,
        name: str,
        path: str | None,
        mmap_mode: str | None,
        native: bool,
        old_format: bool = False,
    ) -> None:
        super().__init__(handle)
        self.handle = handle
        self.name = name
        self.file = path
        self._directory = None if path is None else os.path.dirname(path)
        self.mmap_mode = mmap_mode
        self.native_byte_order = native
        self.old_format = old_format

    def find_class(self, module: str, name: str) -> Any:
        if module == "joblib.numpy_pickle" and name in _WRAPPERS:
            self.old_format |= name != "NumpyArrayWrapper"
            return _WRAPPERS[name]
        return super().find_class(module, name)

    def beside(self, filename: str) -> str:
        """The path of a file the pickle names, in the pickle's folder (joblib < 0.10)."""
        if self._directory is None:
            raise NotADumpFileError(
                compose_message(
                    f"{self.name} was written by joblib < 0.10: its arrays are in files beside it.",
                    "load it by its path, not from a stream",
                ),
                code="FJ402",
            )
        return os.path.join(self._directory, filename)

    def native(self, array: Any) -> Any:
        """``array`` in this machine's byte order, if ``ensure_native_byte_order`` asks for it."""
        if self.native_byte_order and not array.dtype.isnative:
            return in_native_order(array)
        return array

    def load_build(self) -> None:
        super().load_build()
        if isinstance(self.stack[-1], tuple(_WRAPPERS.values())):
            wrapper = self.stack.pop()
            self.stack.append(wrapper.read(self))

    dispatch[pickle.BUILD[0]] = load_build

    def load(self) -> Any:
        try:
            loaded = super().load()
        except UnicodeDecodeError as error:
            raise NotADumpFileError(
                compose_message(
                    f"{self.name}: its text cannot be decoded ({error.reason}). You may be trying "
                    "to read with python 3 a joblib pickle generated with python 2.",
                    "load it with Python 2 and dump it again with pickle protocol 2 from Python 3",
                ),
                code="FJ402",
            ) from error
        if self.old_format:
            warnings.warn(
                _OLD_FORMAT.format(self.name), DeprecationWarning, stacklevel=user_stacklevel(pickle.__file__)
            )
        return loaded


def _unpickle(handle: Any, name: str, path: str | None, mmap_mode: str | None, native: bool, zfile: bool) -> Any:
    """The object of the joblib dump ``handle`` is at: a pickle, or a Z-file around one."""
    if not zfile:
        return _JoblibUnpickler(handle, name, path, memmap_mode(mmap_mode), native).load()
    with _zfile(handle, name) as stream:
        return _JoblibUnpickler(stream, name, path, None, native, old_format=True).load()


def load_joblib_file(path: str, mmap_mode: str | None, native: bool) -> Any:
    """The object in a file written by ``joblib.dump``, uncompressed or a Z-file of joblib < 0.10
    (``load`` reads files compressed as a whole as streams); ``native``: turn big-endian arrays
    read into memory to this machine's byte order."""
    with open(path, "rb") as raw:
        zfile = compressor(raw.read(len(_ZFILE_PREFIX))) == "zfile"
        raw.seek(0)
        if zfile and mmap_mode is not None:
            warn_not_mapped(f"{path} is compressed (joblib < 0.10)", mmap_mode)
        return _unpickle(raw, path, path, mmap_mode, native, zfile)


def load_joblib_stream(stream: Any, name: str, native: bool, zfile: bool) -> Any:
    """The object of the joblib dump ``stream`` is at (a pickle, or a Z-file of joblib < 0.10;
    other whole-stream codecs are the caller's to undo), read no further than its end."""
    return _unpickle(stream, name, None, None, native, zfile)
