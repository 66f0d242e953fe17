"""Reading file objects as ferrojob's readers need them: names for messages, exact reads from
streams that return less (sockets), and bytes already read put back in front (``Replay``)."""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any

from .._caller import user_stacklevel
from .options import text_mode_error


def stream_name(stream: Any) -> str:
    """How errors name a stream: its file name if it has one."""
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else repr(stream)


class Replay:
    """``stream`` with ``head`` (bytes already read from it) put back in front: what a reader
    that cannot seek back hands on after looking at a stream's first bytes."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head = memoryview(head)
        self._stream = stream
        self.name = stream_name(stream)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            head, self._head = bytes(self._head), memoryview(b"")
            return head + self._stream.read()
        if self._head:
            taken, self._head = bytes(self._head[:size]), self._head[size:]
            return taken if len(taken) == size else taken + read_up_to(self._stream, size - len(taken))
        return self._stream.read(size)  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        if not self._head:
            return self._stream.readline(size)  # type: ignore[no-any-return]
        head = bytes(self._head)
        end = head.find(b"\n") + 1 or len(head)
        if size is not None and 0 <= size < end:
            end = size
        self._head = self._head[end:]
        line = head[:end]
        if line.endswith(b"\n") or (size is not None and 0 <= size == len(line)):
            return line
        return line + self._stream.readline(-1 if size is None or size < 0 else size - len(line))

    def readable(self) -> bool:
        return True

    def held(self) -> int:
        """How many bytes this Replay still holds in front of its stream (put back, not read)."""
        return len(self._head)

    def give_back(self, unread: bytes) -> None:
        """``unread``, the last bytes read, belong to what follows: seek the stream back over
        them where it can (the next load starts there), else serve them again from here."""
        if not self._head and getattr(self._stream, "seekable", lambda: False)():
            self._stream.seek(-len(unread), io.SEEK_CUR)
        else:
            self._head = memoryview(bytes(unread) + bytes(self._head))


def read_up_to(stream: Any, size: int) -> bytes:
    """``size`` bytes of ``stream``, fewer only at its end (a socket's reads may return less)."""
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise text_mode_error(stream, "load")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def warn_lost(name: str, count: int) -> None:
    """``count`` bytes read past a dump could not be put back into the stream ``name``."""
    warnings.warn(
        f"{name}: {count} bytes after this dump were read with it and cannot be put back "
        "(the stream cannot seek): a later load from this stream will not find them.",
        stacklevel=user_stacklevel(pickle.__file__),
    )
