"""``dump`` and ``load``: persist Python objects — numpy arrays above all — in Rust.

A dump is ferrojob's own container: the object's pickle (protocol 5) plus each array's data as
a raw section, aligned so that ``load(..., mmap_mode="r")`` maps arrays in place without reading
them. With ``compress``, sections are cut into blocks compressed with zstd (default) or lz4 on
every core; every block carries a checksum, so a damaged file is reported, never loaded wrong.

``load`` unpickles: load only files you trust, or pass ``allow_pickle=False`` to accept numpy
arrays and plain containers only.

Example::

    >>> import numpy as np, tempfile, os
    >>> from ferrojob import dump, load
    >>> path = os.path.join(tempfile.mkdtemp(), "data.fj")
    >>> dump({"weights": np.arange(4.0)}, path, compress=3)
    [...]
    >>> load(path)["weights"]
    array([0., 1., 2., 3.])
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import sys
import warnings
from typing import Any

from . import _core, _safe_pickle
from ._sharedmem import validate_mmap_mode
from ._streams import dump_stream, load_stream, mappable_file, seek_past_dump
from .errors import DamagedFileError, InvalidParameterError, NotADumpFileError, compose_message

__all__ = ["dump", "load"]

#: ferrojob's codecs, then joblib's (written block by block on every core too).
CODECS = ("zstd", "lz4", "zlib", "gzip", "bz2", "lzma", "xz")
#: Levels used when a codec is named without one (zstd 1: measured on the benchmark's floats, the
#: ratio of zlib-3 at ten times its speed; joblib's codecs: joblib's default, 3).
DEFAULT_LEVEL = {"zstd": 1, "lz4": 1, "zlib": 3, "gzip": 3, "bz2": 3, "lzma": 3, "xz": 3}
#: The most a codec's level may be (joblib's codecs use their libraries' scales).
_MAX_LEVEL = {"zstd": 22, "lz4": 1, "zlib": 9, "gzip": 9, "bz2": 9, "lzma": 9, "xz": 9}
#: A file name ending in one of these picks the codec, as in joblib.
_SUFFIX_CODECS = {
    ".zst": "zstd",
    ".zstd": "zstd",
    ".lz4": "lz4",
    ".z": "zlib",
    ".gz": "gzip",
    ".bz2": "bz2",
    ".lzma": "lzma",
    ".xz": "xz",
}


def _bad_compress(compress: Any, *help_lines: str) -> InvalidParameterError:
    return InvalidParameterError(
        compose_message(
            f"compress={compress!r} is not a compression setting.",
            *(
                help_lines
                or ("use 0 (none), a level 1-9 (zstd), True, or a (codec, level) pair: ('zstd', 3), ('gzip', 3)",)
            ),
        ),
        code="FJ201",
    )


def zstd_level(compress: int) -> int:
    """The zstd level for joblib's 1-9 scale (zlib's levels): zstd reaches zlib-N's ratio at a
    lower level, far faster — 1 to 3 map to zstd 1, then N maps to N - 2 (9 to zstd 7)."""
    return max(compress - 2, 1)


def parse_compress(compress: Any, filename: str = "") -> tuple[str, int]:
    """joblib's ``compress`` argument as ``(codec, level)``; codec "raw" for no compression.

    As in joblib, a file name ending in ".gz", ".z", ".bz2", ".xz", ".lzma", ".lz4" (or ".zst")
    picks the codec unless ``compress`` names one, and ``compress`` then gives the level (0 or
    False: that codec's default level). Without such a suffix, ``compress=3`` and ``True`` mean
    zstd (see ``zstd_level``), where joblib uses zlib: the same ratio, several times faster."""
    suffix_codec = _SUFFIX_CODECS.get(os.path.splitext(filename)[1].lower())
    if isinstance(compress, bool) or isinstance(compress, int):
        level = int(compress)
        if not 0 <= level <= 9:
            raise _bad_compress(compress, "levels go from 0 (none) to 9")
        if suffix_codec is not None:
            if suffix_codec == "zstd":
                return "zstd", zstd_level(level) if level else DEFAULT_LEVEL["zstd"]
            return suffix_codec, level or DEFAULT_LEVEL[suffix_codec]
        if compress is True:
            level = 3
        return ("zstd", zstd_level(level)) if level else ("raw", 0)
    if isinstance(compress, str):
        compress = (compress, None)
    if isinstance(compress, tuple) and len(compress) == 2 and isinstance(compress[0], str):
        name, level = compress
        if name not in CODECS:
            raise _bad_compress(compress, f"codecs: {', '.join(repr(codec) for codec in CODECS)}")
        if level is None:
            level = DEFAULT_LEVEL[name]
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= _MAX_LEVEL[name]:
            raise _bad_compress(compress, f"the level of {name} is an integer from 0 to {_MAX_LEVEL[name]}")
        return (name, level) if level or name in ("lzma", "xz") else ("raw", 0)
    raise _bad_compress(compress)


def _path(filename: Any, action: str) -> str:
    if isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    raise TypeError(
        compose_message(
            f"{action} expects a file name (str or os.PathLike) or an open binary file, got {type(filename).__name__}.",
            "pass the path, or a file object opened in binary mode",
        )
    )


def _is_file_object(target: Any, method: str) -> bool:
    return not isinstance(target, (str, bytes, os.PathLike)) and callable(getattr(target, method, None))


def dump(value: Any, filename: Any, compress: Any = 0, protocol: int | None = None) -> list[str] | None:
    """Persist ``value`` into ``filename`` (atomically); returns ``[filename]`` like joblib.

    ``compress``: 0/False (none, the default); a level 1-9 on joblib's scale, or True (3),
    mapped to zstd levels that give at least zlib's ratio at that level (see ``zstd_level``);
    or an exact ``(codec, level)`` pair: "zstd" (levels 1-22), "lz4", or joblib's "zlib",
    "gzip", "bz2", "lzma"/"xz" (1-9). A file name ending in ".gz", ".z", ".bz2", ".xz",
    ".lzma", ".lz4" or ".zst" picks that codec, as in joblib. Every codec compresses block by
    block on every core. ``protocol`` is accepted for joblib compatibility; dumps always use
    pickle protocol 5 (which keeps array data out of the pickle).

    Example::

        >>> import numpy as np, tempfile, os
        >>> from ferrojob import dump
        >>> dump(np.zeros(3), os.path.join(tempfile.mkdtemp(), "z.fj"), compress=("lz4", 1))
        [...]
    """
    buffers: list[pickle.PickleBuffer] = []
    if _is_file_object(filename, "write"):
        name = getattr(filename, "name", "")
        codec, level = parse_compress(compress, name if isinstance(name, str) else "")
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        dump_stream(filename, data, buffers, codec, level)
        return None  # as joblib: nothing is returned for a file object
    path = _path(filename, "dump")
    codec, level = parse_compress(compress, path)
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    _core.write_dump(path, data, buffers, codec, level)
    return [path]


def refuse_joblib_pickle(name: str) -> NotADumpFileError:
    """The error for a joblib dump met with ``allow_pickle=False``."""
    return NotADumpFileError(
        compose_message(
            f"{name} was written by joblib.dump, whose format is a pickle: with allow_pickle=False it is not read.",
            "convert it once, from a trusted source: ferrojob.dump(ferrojob.load(path), new_path)",
        ),
        code="FJ402",
    )


def load(
    filename: Any, mmap_mode: str | None = None, allow_pickle: bool = True, ensure_native_byte_order: Any = "auto"
) -> Any:
    """Read back an object written by ``dump``.

    ``mmap_mode`` ("r", "r+", "w+" or "c", as numpy.memmap): arrays of an uncompressed dump are
    memory-mapped, in constant time ("r+" writes go to the file, "c" stays private); for a
    compressed dump it is ignored with a warning, like joblib. ``load`` unpickles, which can run
    code: only load trusted files, or use ``allow_pickle=False`` (numpy arrays and plain
    containers only).

    Memory-mapped arrays are ``numpy.memmap`` instances, as joblib's are, with ``filename``,
    ``offset`` and ``mode``. ``filename`` may also be an open binary file object (a file, a
    socket's ``makefile``, ``io.BytesIO``, a ``gzip.GzipFile``): one dump is read from its
    current position, and no further, so several dumps in one stream load one by one. A plain
    file at its start is memory-mapped by its name; other streams' arrays are read into memory.

    ``ensure_native_byte_order`` ("auto": when not memory-mapping) converts big-endian arrays to
    this machine's byte order, as joblib does; a mapped array keeps the file's. A file written by
    ``joblib.dump`` (any version, compressed or not) is read natively, without joblib.

    Raises ``DamagedFileError`` (a ``ValueError``) for a truncated or corrupted dump, naming the
    file and the damaged section; ``NotADumpFileError`` for a file that is no dump.
    """
    validate_mmap_mode(mmap_mode, "read into memory")
    if ensure_native_byte_order is True and mmap_mode is not None:
        raise InvalidParameterError(
            compose_message(
                "Native byte ordering can only be enforced if 'mmap_mode' parameter is set to "
                f"None, but got 'mmap_mode={mmap_mode}' instead.",
                "a mapped array keeps the file's byte order: pass mmap_mode=None to convert",
            ),
            code="FJ201",
        )
    native = native_byte_order(mmap_mode, ensure_native_byte_order)
    if _is_file_object(filename, "read"):
        path = mappable_file(filename) if mmap_mode is not None else None
        if path is not None:  # a file at its start, as joblib maps one: by its name
            loaded = load(path, mmap_mode, allow_pickle, ensure_native_byte_order)
            seek_past_dump(filename)
            return loaded
        if mmap_mode is not None:
            warn_not_mapped("a file object other than a plain file at its start", mmap_mode)
        return load_stream(filename, allow_pickle, ensure_native_byte_order)
    path = _path(filename, "load")
    try:
        data, buffers, mapped, offsets = _core.read_dump(path, mmap_mode)
    except NotADumpFileError:
        return _load_other(path, mmap_mode, allow_pickle, ensure_native_byte_order)
    if mmap_mode is not None and not mapped and buffers:
        warn_not_mapped(f"{path} is compressed", mmap_mode)
    if allow_pickle and mapped and mmap_mode is not None:
        return _ArrayUnpickler(data, buffers, offsets, path, mmap_mode, native=False).load()
    if allow_pickle:
        return _ArrayUnpickler(data, buffers, offsets, path, None, native).load()
    try:
        return _safe_pickle.loads(data, buffers)
    except DamagedFileError as error:
        raise DamagedFileError(f"{path}: {error}", code="FJ401") from error.__cause__


def _load_other(path: str, mmap_mode: str | None, allow_pickle: bool, ensure_native_byte_order: Any) -> Any:
    """A file that is no ferrojob container: compressed as a whole (by joblib, or through
    ``gzip.open``: either format inside), or joblib's own format."""
    from ._joblib_files import compressor, load_joblib_file

    with open(path, "rb") as handle:
        start = handle.read(8)
        codec = compressor(start)
        if codec is not None and codec != "zfile":
            if mmap_mode is not None:
                warn_not_mapped(f"{path} is compressed ({codec})", mmap_mode)
            handle.seek(0)
            return load_stream(handle, allow_pickle, ensure_native_byte_order)
    if not _core.looks_like_joblib(start):
        _core.read_dump(path)  # raises NotADumpFileError, saying what the file looks like
    if not allow_pickle:
        raise refuse_joblib_pickle(path)
    return load_joblib_file(path, mmap_mode, native_byte_order(mmap_mode, ensure_native_byte_order))


def native_byte_order(mmap_mode: str | None, ensure_native_byte_order: Any) -> bool:
    """Whether big-endian arrays come back in this machine's byte order: joblib's rule, "auto"
    meaning "when not memory-mapping"."""
    return mmap_mode is None if ensure_native_byte_order == "auto" else bool(ensure_native_byte_order)


def in_native_order(array: Any) -> Any:
    """A copy of the big-endian ``array`` in this machine's byte order."""
    return array.astype(array.dtype.newbyteorder("="))


def warn_not_mapped(what: str, mmap_mode: str) -> None:
    """``mmap_mode`` cannot apply (``what``: why): warn, as joblib does, that arrays are read."""
    warnings.warn(
        f"{what}: mmap_mode={mmap_mode!r} is ignored and its arrays are read into memory.",
        stacklevel=caller_of_load(),
    )


def caller_of_load() -> int:
    """The ``stacklevel`` at which a warning points at the caller of ``load`` (or ``Memory``):
    the first frame outside ferrojob and the pickle module."""
    ours = (os.path.dirname(__file__), pickle.__file__)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(ours):
        frame, level = frame.f_back, level + 1
    return level


def memmap_mode(mmap_mode: str | None) -> str | None:
    """The mode arrays of a loaded file are mapped with: loading never truncates, so "w+"
    means "r+" (joblib's rule)."""
    return "r+" if mmap_mode == "w+" else mmap_mode


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a dump, shaping the arrays built over its buffers as joblib's ``load`` does:
    with ``mmap_mode``, each is a ``numpy.memmap`` that says where it lies in the file
    (``filename``, ``offset``, ``mode``); with ``native``, a big-endian array comes back in this
    machine's byte order (``ensure_native_byte_order``). The caller keeps ``buffers`` alive
    while it loads (their ids identify them)."""

    _NUMPY_FROMBUFFER = frozenset({("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")})

    def __init__(
        self, data: bytes, buffers: list[Any], offsets: list[int], path: str, mode: str | None, native: bool
    ) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._shape = _ArrayShaping(
            {id(buffer): offset for buffer, offset in zip(buffers, offsets, strict=True)},
            os.path.abspath(path),
            memmap_mode(mode),
            native,
        )

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) in self._NUMPY_FROMBUFFER and (self._shape.mode is not None or self._shape.native):
            # Not a method of this unpickler: its memo keeps what this returns, and a reference
            # back would make a cycle that keeps every loaded buffer alive until a collection.
            return functools.partial(self._shape, found)
        return found


@dataclasses.dataclass(frozen=True, slots=True)
class _ArrayShaping:
    """How ``_ArrayUnpickler`` shapes each array: ``offsets`` of the buffers (by id) in ``path``,
    mapped with ``mode`` (or None), made native-endian if ``native``."""

    offsets: dict[int, int]
    path: str
    mode: str | None
    native: bool

    def __call__(self, original: Any, buffer: Any, *args: Any) -> Any:
        array = original(buffer, *args)
        if self.native and not array.dtype.isnative:
            return in_native_order(array)
        offset = self.offsets.get(id(buffer))
        if self.mode is None or offset is None:
            return array
        import numpy as np

        mapped = array.view(np.memmap)
        mapped.filename, mapped.offset, mapped.mode = self.path, offset, self.mode
        return mapped
