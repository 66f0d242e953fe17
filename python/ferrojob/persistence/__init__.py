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

import os
import pickle
from typing import Any

from .. import _core
from .._settings import validate_mmap_mode
from ..errors import InvalidParameterError, NotADumpFileError, compose_message
from .containers import load_container
from .joblib_files import compressor, load_joblib_file
from .joblib_writer import dump_joblib_path, joblib_compression, write_joblib
from .options import (
    is_file_object,
    native_byte_order,
    parse_compress,
    path_of,
    refuse_joblib_pickle,
    warn_not_mapped,
    whole_file_codec,
)
from .streams import dump_stream, load_stream, mappable_file, seek_past_dump

__all__ = ["dump", "load", "parse_compress"]


def dump(
    value: Any, filename: Any, compress: Any = 0, protocol: int | None = None, format: str | None = None
) -> list[str] | None:
    """Persist ``value`` into ``filename`` (atomically); returns ``[filename]`` like joblib.

    ``compress``: 0/False (none, the default); a level 1-9 on joblib's scale, or True (3),
    mapped to zstd levels that give at least zlib's ratio at that level (see ``zstd_level``);
    or an exact ``(codec, level)`` pair: "zstd" (levels 1-22), "lz4", or joblib's "zlib",
    "gzip", "bz2", "lzma"/"xz" (1-9). A file name ending in ".gz", ".z", ".bz2", ".xz",
    ".lzma", ".lz4" or ".zst" picks that codec, as in joblib; a name ending in ".gz", ".z",
    ".bz2", ".xz" or ".lzma" is then a real stream of that codec (``gunzip`` reads it: the
    container is inside), compressed member by member on every core where the codec has members
    (gzip, bz2, xz). Otherwise every codec compresses block by block on every core. ``protocol`` is accepted for joblib compatibility; dumps always use
    pickle protocol 5 (which keeps array data out of the pickle).

    ``format="joblib"`` writes joblib's own format instead, which plain ``joblib.load`` reads
    (for consumers that run joblib), with ``compress`` and ``protocol`` as joblib takes them (a
    file compressed as a whole, zlib by default); the default is ``"ferrojob"``, or what an
    enclosing ``parallel_config(dump_format=...)`` or the environment variable
    ``FERROJOB_DUMP_FORMAT`` says.

    Example::

        >>> import numpy as np, tempfile, os
        >>> from ferrojob import dump
        >>> dump(np.zeros(3), os.path.join(tempfile.mkdtemp(), "z.fj"), compress=("lz4", 1))
        [...]
    """
    if _dump_format(format) == "joblib":
        if is_file_object(filename, "write"):
            name = getattr(filename, "name", "")
            write_joblib(value, filename, joblib_compression(compress, name if isinstance(name, str) else ""), protocol)
            return None
        return dump_joblib_path(value, path_of(filename, "dump"), compress, protocol)
    buffers: list[pickle.PickleBuffer] = []
    if is_file_object(filename, "write"):
        name = getattr(filename, "name", "")
        codec, level = parse_compress(compress, name if isinstance(name, str) else "")
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        dump_stream(filename, data, buffers, codec, level)
        return None  # as joblib: nothing is returned for a file object
    path = path_of(filename, "dump")
    codec, level = parse_compress(compress, path)
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    _core.write_dump(path, data, buffers, codec, level, whole=whole_file_codec(path, codec))
    return [path]


#: The environment variable that sets ``dump``'s default format.
DUMP_FORMAT_VARIABLE = "FERROJOB_DUMP_FORMAT"


def _dump_format(format: str | None) -> str:
    """``format`` as given, else ``parallel_config(dump_format=...)``'s, else the environment's,
    else "ferrojob"; checked."""
    from .._settings import DUMP_FORMATS
    from ..config import current_config, is_default

    source = "format"
    if format is None:
        configured = current_config().dump_format
        if not is_default(configured):
            return str(configured)  # checked by parallel_config
        format, source = os.environ.get(DUMP_FORMAT_VARIABLE) or "ferrojob", DUMP_FORMAT_VARIABLE
    if format not in DUMP_FORMATS:
        raise InvalidParameterError(
            compose_message(
                f"{source}={format!r} is not a dump format.",
                "use 'ferrojob' (the default: compressed block by block on every core, memory-mapped "
                "in constant time) or 'joblib' (what plain joblib.load reads)",
            ),
            code="FJ201",
        )
    return format


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
    if is_file_object(filename, "read"):
        path = mappable_file(filename) if mmap_mode is not None else None
        if path is not None:  # a file at its start, as joblib maps one: by its name
            loaded = load(path, mmap_mode, allow_pickle, ensure_native_byte_order)
            seek_past_dump(filename)
            return loaded
        if mmap_mode is not None:
            warn_not_mapped("a file object other than a plain file at its start", mmap_mode)
        return load_stream(filename, allow_pickle, ensure_native_byte_order)
    path = path_of(filename, "load")
    try:
        return load_container(path, mmap_mode, allow_pickle, native)
    except NotADumpFileError:
        return _load_other(path, mmap_mode, allow_pickle, ensure_native_byte_order)


def _load_other(path: str, mmap_mode: str | None, allow_pickle: bool, ensure_native_byte_order: Any) -> Any:
    """A file that is no ferrojob container: compressed as a whole (by joblib, or through
    ``gzip.open``: either format inside), or joblib's own format."""
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
