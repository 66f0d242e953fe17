"""Dumps written into and read from open binary file objects.

A container is written by offset, so ``dump`` into a stream builds it in a scratch file first,
then copies it. ``load`` reads one dump from the stream's current position. A stream is read no further than the dump's end: several dumps written one after another into
one file come back one by one, and a socket's stream is never read to its end (it would wait
for the peer to close). A ferrojob container says how long it is in its header
(``_core.dump_extent``); joblib's format is a pickle, which ends by itself. A stream compressed
as a whole (a file written through ``gzip.GzipFile``, or by joblib) is decompressed first.

One exception, joblib's: ``dump(x, buf); load(buf)`` on an ``io.BytesIO`` left at its end reads
the dump from the start, since nothing follows.
"""

from __future__ import annotations

import contextlib
import errno
import io
import lzma
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from .. import _core
from ..errors import DamagedFileError, NotADumpFileError, compose_message
from . import joblib_files
from .containers import load_container
from .options import native_byte_order, refuse_joblib_pickle
from .readers import Replay, read_up_to, stream_name, warn_lost

#: The first bytes read to tell formats apart (a container's preamble is 16 bytes).
_SNIFF = 16
_COPY_CHUNK = 1 << 20


#: Errors of a full or capped disk while staging: said plainly, with where and what to do.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@contextlib.contextmanager
def scratch_file() -> Iterator[str]:
    """A path in a private folder of the caller's temporary directory (``tempfile``'s: TMPDIR),
    removed after use: where a dump for or from a file object is staged, since the container is
    read and written by offset. Not /dev/shm: a container's /dev/shm is often small (Docker's
    64 MB), and the temporary directory is where a caller expects scratch data and can move it."""
    with tempfile.TemporaryDirectory(prefix="ferrojob-") as folder:
        yield os.path.join(folder, "dump")


@contextlib.contextmanager
def staging(path: str) -> Iterator[None]:
    """Writing the staged copy at ``path``: a disk that is full or capped (RLIMIT_FSIZE) is an
    OSError that says where, and what to do."""
    try:
        yield
    except OSError as error:
        if error.errno not in _NO_ROOM:
            raise
        folder = os.path.dirname(path)
        raise OSError(
            error.errno,
            compose_message(
                f"a dump to or from a file object is staged in {folder}, which has no room for it "
                f"({os.strerror(error.errno)})",
                f"set TMPDIR to a folder with room (now {tempfile.gettempdir()}), or dump to / load from a path",
            ),
        ) from error


def dump_stream(stream: Any, data: bytes, buffers: list[Any], codec: str, level: int) -> None:
    """Write a container of ``data`` and ``buffers`` (see ``_core.write_dump``) into ``stream``."""
    with scratch_file() as path:
        with staging(path):
            _core.write_dump(path, data, buffers, codec, level)
        with open(path, "rb") as written:
            shutil.copyfileobj(written, stream, _COPY_CHUNK)


def _rewind_if_exhausted(stream: Any) -> None:
    """joblib's rule for a seekable stream that cannot peek (``io.BytesIO``): a stream left at
    its end by ``dump`` is read from its start."""
    if hasattr(stream, "peek") or not getattr(stream, "seekable", lambda: False)():
        return
    position = stream.tell()
    if stream.seek(0, os.SEEK_END) == position:
        stream.seek(0)
    else:
        stream.seek(position)


def mappable_file(stream: Any) -> str | None:
    """The path of the plain file ``stream`` reads, if it is an open file at its start: such a
    stream's dump can be memory-mapped by its name, as joblib maps it."""
    if not isinstance(stream, (io.BufferedReader, io.FileIO)) or not isinstance(stream.name, str):
        return None
    try:
        opened, named = os.fstat(stream.fileno()), os.stat(stream.name)
        at_start = stream.tell() == 0
    except (OSError, ValueError):
        return None
    if at_start and stat.S_ISREG(opened.st_mode) and os.path.samestat(opened, named):
        return stream.name
    return None


def seek_past_dump(stream: Any) -> None:
    """Move a seekable ``stream`` at the start of a dump to its end (a joblib dump, which does not
    say its length, is taken to end with the file)."""
    head = read_up_to(stream, _SNIFF)
    if head.startswith(b"FJDUMP"):
        _, length = _container_head(head, stream, stream_name(stream))
        stream.seek(length)
    else:
        stream.seek(0, os.SEEK_END)


def load_stream(stream: Any, allow_pickle: bool, ensure_native_byte_order: Any) -> Any:
    """The next dump of ``stream`` (a ferrojob or joblib dump, compressed or not as a whole)."""
    _rewind_if_exhausted(stream)
    return _load(stream, allow_pickle, ensure_native_byte_order)


def _load(stream: Any, allow_pickle: bool, ensure_native_byte_order: Any, outer: str | None = None) -> Any:
    """``outer``: the codec of the whole-stream compression already unwrapped (joblib's files
    have at most one layer: a second is refused, never unwrapped again and again)."""
    name = stream_name(stream)
    head = read_up_to(stream, _SNIFF)
    if not head:
        raise NotADumpFileError(f"{name}: nothing to load: the stream is at its end", code="FJ402")
    if head.startswith(b"FJDUMP"):
        return _load_container(head, stream, name, allow_pickle, ensure_native_byte_order)
    codec = joblib_files.compressor(head)
    if codec not in (None, "zfile") and outer is not None:
        raise NotADumpFileError(
            compose_message(
                f"{name}: compressed twice ({codec} inside {outer}); a dump is compressed once at most,",
                "so it is not unwrapped further. Decompress it yourself if you trust it",
            ),
            code="FJ402",
        )
    if codec not in (None, "zfile"):
        # Compressed as a whole: what is inside may be either format.
        try:
            replay = Replay(head, stream)
            with joblib_files.decompressing(replay, codec, name) as inner:
                loaded = _load(inner, allow_pickle, ensure_native_byte_order, outer=codec)
                # On to the end of its compression (its trailer): the member then gives back
                # what it read past its end, and the stream is left right after this dump,
                # where the next one starts.
                joblib_files.continue_across_members(inner, False)
                inner.read()
            if replay.held():
                # The stream could not take them back: say so, the next load would miss them.
                warn_lost(name, replay.held())
            return loaded
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # the stream's own I/O error, not its content
            raise DamagedFileError(
                compose_message(
                    f"{name}: its {codec} compression is damaged or cut short ({error}).",
                    "the file was damaged or cut: dump the object again",
                ),
                code="FJ401",
            ) from error
    if _core.looks_like_joblib(head):
        if not allow_pickle:
            raise refuse_joblib_pickle(name)
        native = native_byte_order(None, ensure_native_byte_order)
        return joblib_files.load_joblib_stream(Replay(head, stream), name, native, zfile=codec == "zfile")
    try:
        _core.dump_extent(head, name)  # raises NotADumpFileError, saying what the stream looks like
    except NotADumpFileError as error:
        if outer is None:
            raise
        inside = str(error).removeprefix(f"{name}: ")
        raise NotADumpFileError(f"{name}: a {outer} file, but what it holds is {inside}", code="FJ402") from None
    raise NotADumpFileError(f"{name}: not a dump", code="FJ402")


def _container_head(head: bytes, stream: Any, name: str) -> tuple[bytes, int]:
    """``head`` (a container's first bytes) grown with what ``stream`` holds next up to the end
    of the container's header, and the container's length."""
    while True:
        complete, length = _core.dump_extent(head, name)
        if complete:
            return head, length
        head += read_up_to(stream, length - len(head))
        if len(head) < length:
            raise _ends_early(name, len(head), "its header")


def _load_container(head: bytes, stream: BinaryIO, name: str, allow_pickle: bool, ensure_native_byte_order: Any) -> Any:
    """Read the container ``head`` starts, and nothing after it, into a scratch file; load that."""
    start = _position(stream, len(head))
    # A container says its length: a stream compressed as a whole may go on into the members
    # that follow (ferrojob writes `.gz`, `.bz2` and `.xz` dumps as members made on every core).
    joblib_files.continue_across_members(stream, True)
    head, length = _container_head(head, stream, name)
    _check_holds(stream, start, length, name)
    with scratch_file() as path:
        with staging(path), open(path, "wb") as copy:
            copy.write(head)
            copied = len(head)
            while copied < length:
                chunk = stream.read(min(_COPY_CHUNK, length - copied))
                if not chunk:
                    raise _ends_early(name, copied, f"the {length} bytes of its dump")
                copy.write(chunk)
                copied += len(chunk)
        try:
            return load_container(path, None, allow_pickle, native_byte_order(None, ensure_native_byte_order))
        except (DamagedFileError, NotADumpFileError) as error:
            # Name the stream, not the scratch file it was copied to.
            raise type(error)(str(error).replace(path, name), code=error.code) from None


def _position(stream: Any, already_read: int) -> int | None:
    """Where the dump starts in a seekable ``stream`` of which ``already_read`` bytes were read."""
    try:
        return stream.tell() - already_read if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _check_holds(stream: Any, start: int | None, length: int, name: str) -> None:
    """A seekable stream that holds less than the ``length`` its dump's header declares is
    refused before anything is copied: the header does not size the work, the stream does."""
    if start is None:
        return
    position = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    if end - start < length:
        # Left where the dump starts: nothing of it was taken.
        stream.seek(start)
        raise DamagedFileError(
            compose_message(
                f"{name}: truncated: its dump is {length} bytes long, the stream holds {end - start}.",
                "the writer stopped early, or the stream was cut: dump the object again",
            ),
            code="FJ401",
        )
    stream.seek(position)


def _ends_early(name: str, got: int, what: str) -> DamagedFileError:
    return DamagedFileError(
        compose_message(
            f"{name}: truncated: the stream ends after {got} bytes, inside {what}.",
            "the writer stopped early, or the stream was cut: dump the object again",
        ),
        code="FJ401",
    )
