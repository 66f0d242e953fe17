"""The rules ``dump`` and ``load`` share: what ``compress`` means, which targets are file
objects, how loaded arrays are mapped and ordered, and the warnings and refusals every reader
words alike (ferrojob's containers, joblib's files, streams)."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from typing import Any

from .._caller import user_stacklevel
from ..errors import InvalidParameterError, NotADumpFileError, compose_message

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


#: The file name endings of codecs with a stream format of their own: a dump named so is a real
#: stream of that codec (``gunzip`` and every other tool read it), the container inside it.
WHOLE_FILE_CODECS = frozenset({"zlib", "gzip", "bz2", "lzma", "xz"})


def whole_file_codec(filename: str, codec: str) -> bool:
    """Whether a dump to ``filename`` with ``codec`` is written as a real stream of ``codec``:
    the name's ending asks for that very codec, and it has a stream format."""
    return codec in WHOLE_FILE_CODECS and _SUFFIX_CODECS.get(os.path.splitext(filename)[1].lower()) == codec


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


def path_of(filename: Any, action: str) -> str:
    if isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    raise TypeError(
        compose_message(
            f"{action} expects a file name (str or os.PathLike) or an open binary file, got {type(filename).__name__}.",
            "pass the path, or a file object opened in binary mode",
        )
    )


def is_file_object(target: Any, method: str) -> bool:
    """Whether ``target`` is a file object ``dump``/``load`` uses through ``method``; one opened
    in text mode is refused here, saying so (its ``read`` gives ``str``, its ``write`` takes it)."""
    if isinstance(target, (str, bytes, os.PathLike)) or not callable(getattr(target, method, None)):
        return False
    if isinstance(target, io.TextIOBase):
        raise text_mode_error(target, "load" if method == "read" else "dump")
    return True


def text_mode_error(target: Any, action: str) -> TypeError:
    """The error for a file object in text mode: dumps are bytes."""
    name = getattr(target, "name", None)
    what = repr(name) if isinstance(name, str) else type(target).__name__
    mode = "rb" if action == "load" else "wb"
    return TypeError(
        compose_message(
            f"{action} needs a binary file object, but {what} is in text mode (it {'reads' if action == 'load' else 'writes'} str, not bytes).",
            f"open it in binary mode: {action}(..., open(path, {mode!r})), or pass the path itself",
        )
    )


def refuse_joblib_pickle(name: str) -> NotADumpFileError:
    """The error for a joblib dump met with ``allow_pickle=False``."""
    return NotADumpFileError(
        compose_message(
            f"{name} was written by joblib.dump, whose format is a pickle: with allow_pickle=False it is not read.",
            "convert it once, from a trusted source: ferrojob.dump(ferrojob.load(path), new_path)",
        ),
        code="FJ402",
    )


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
        stacklevel=user_stacklevel(pickle.__file__),  # the caller of load (or Memory)
    )


def memmap_mode(mmap_mode: str | None) -> str | None:
    """The mode arrays of a loaded file are mapped with: loading never truncates, so "w+"
    means "r+" (joblib's rule)."""
    return "r+" if mmap_mode == "w+" else mmap_mode
