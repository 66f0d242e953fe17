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
import warnings
from typing import Any

from . import _core, _safe_pickle
from ._sharedmem import validate_mmap_mode
from .errors import DamagedFileError, InvalidParameterError, NotADumpFileError, compose_message

__all__ = ["dump", "load"]

CODECS = ("zstd", "lz4")
#: Levels used when a codec is named without one (zstd 1: measured on the benchmark's floats, the
#: ratio of zlib-3 at ten times its speed).
DEFAULT_LEVEL = {"zstd": 1, "lz4": 1}
_JOBLIB_CODECS = ("zlib", "gzip", "bz2", "lzma", "xz")
_SUFFIX_CODECS = {".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}


def _bad_compress(compress: Any, *help_lines: str) -> InvalidParameterError:
    return InvalidParameterError(
        compose_message(
            f"compress={compress!r} is not a compression setting.",
            *(help_lines or ("use 0 (none), a level 1-9 (zstd), True, or ('zstd', 3) / ('lz4', 1)",)),
        ),
        code="FJ201",
    )


def zstd_level(compress: int) -> int:
    """The zstd level for joblib's 1-9 scale (zlib's levels): zstd reaches zlib-N's ratio at a
    lower level, far faster — 1 to 3 map to zstd 1, then N maps to N - 2 (9 to zstd 7)."""
    return max(compress - 2, 1)


def parse_compress(compress: Any, filename: str = "") -> tuple[str, int]:
    """joblib's ``compress`` argument as ``(codec, level)``; codec "raw" for no compression."""
    if isinstance(compress, bool):
        if compress:
            return "zstd", zstd_level(3)
        return _codec_from_suffix(filename)
    if isinstance(compress, int):
        if not 0 <= compress <= 9:
            raise _bad_compress(compress, "levels go from 0 (none) to 9")
        return ("zstd", zstd_level(compress)) if compress else _codec_from_suffix(filename)
    if isinstance(compress, str):
        compress = (compress, None)
    if isinstance(compress, tuple) and len(compress) == 2 and isinstance(compress[0], str):
        name, level = compress
        if name in _JOBLIB_CODECS:
            raise _bad_compress(
                compress,
                f"ferrojob compresses with zstd or lz4 ({name} is joblib's); "
                "use ('zstd', 3): faster and smaller",
            )
        if name not in CODECS:
            raise _bad_compress(compress, "codecs: 'zstd' (default) or 'lz4'")
        if level is None:
            level = DEFAULT_LEVEL[name]
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 22:
            raise _bad_compress(compress, "the level is an integer (zstd: 1-22)")
        return (name, level) if level else ("raw", 0)
    raise _bad_compress(compress)


def _codec_from_suffix(filename: str) -> tuple[str, int]:
    codec = _SUFFIX_CODECS.get(os.path.splitext(filename)[1])
    return (codec, DEFAULT_LEVEL[codec]) if codec else ("raw", 0)


def _path(filename: Any, action: str) -> str:
    if isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    raise TypeError(
        compose_message(
            f"{action} expects a file name (str or os.PathLike), got {type(filename).__name__}.",
            "pass the path; ferrojob writes atomically, which needs to own the file",
        )
    )


def dump(value: Any, filename: Any, compress: Any = 0, protocol: int | None = None) -> list[str]:
    """Persist ``value`` into ``filename`` (atomically); returns ``[filename]`` like joblib.

    ``compress``: 0/False (none, the default); a level 1-9 on joblib's scale, or True (3),
    mapped to zstd levels that give at least zlib's ratio at that level (see ``zstd_level``);
    or an exact ``(codec, level)`` pair, codec "zstd" (levels 1-22) or "lz4". A file name
    ending in ".zst" or ".lz4" picks that codec. ``protocol`` is accepted for joblib compatibility; dumps always use pickle
    protocol 5 (which keeps array data out of the pickle).

    Example::

        >>> import numpy as np, tempfile, os
        >>> from ferrojob import dump
        >>> dump(np.zeros(3), os.path.join(tempfile.mkdtemp(), "z.fj"), compress=("lz4", 1))
        [...]
    """
    path = _path(filename, "dump")
    codec, level = parse_compress(compress, path)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    _core.write_dump(path, data, buffers, codec, level)
    return [path]


def _load_joblib_file(path: str, mmap_mode: str | None, allow_pickle: bool) -> Any:
    try:
        import joblib
    except ImportError:
        joblib = None
    if joblib is None or not allow_pickle:
        reason = "joblib is not installed" if joblib is None else "allow_pickle=False"
        raise NotADumpFileError(
            compose_message(
                f"{path} was written by joblib.dump, not ferrojob.dump ({reason}).",
                "install joblib to read it here (ferrojob.load then uses joblib.load), or",
                "convert it once: ferrojob.dump(joblib.load(path), new_path)",
            ),
            code="FJ402",
        )
    return joblib.load(path, mmap_mode=mmap_mode)


def load(filename: Any, mmap_mode: str | None = None, allow_pickle: bool = True) -> Any:
    """Read back an object written by ``dump``.

    ``mmap_mode`` ("r", "r+", "w+" or "c", as numpy.memmap): arrays of an uncompressed dump are
    memory-mapped, in constant time ("r+" writes go to the file, "c" stays private); for a
    compressed dump it is ignored with a warning, like joblib. A file written by ``joblib.dump``
    is read with joblib when it is installed. ``load`` unpickles, which can run code: only load
    trusted files, or use ``allow_pickle=False`` (numpy arrays and plain containers only).

    Raises ``DamagedFileError`` (a ``ValueError``) for a truncated or corrupted dump, naming the
    file and the damaged section; ``NotADumpFileError`` for a file that is no dump.
    """
    path = _path(filename, "load")
    validate_mmap_mode(mmap_mode, "read into memory")
    try:
        data, buffers, mapped = _core.read_dump(path, mmap_mode)
    except NotADumpFileError:
        with open(path, "rb") as handle:
            start = handle.read(8)
        if _core.looks_like_joblib(start):
            return _load_joblib_file(path, mmap_mode, allow_pickle)
        raise
    if mmap_mode is not None and not mapped and buffers:
        warnings.warn(
            f"{path} is compressed: mmap_mode={mmap_mode!r} is ignored and its arrays are read "
            "into memory.",
            stacklevel=2,
        )
    if allow_pickle:
        return pickle.loads(data, buffers=buffers)
    try:
        return _safe_pickle.loads(data, buffers)
    except DamagedFileError as error:
        raise DamagedFileError(f"{path}: {error}", code="FJ401") from error.__cause__
