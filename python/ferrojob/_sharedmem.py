"""Large arguments in shared memory: each buffer placed once per call, whatever the task count.

A call's out-of-band buffers (pickle protocol 5: numpy arrays, bytearrays, ...) are copied into
the Rust arena of its session. The same memory passed again — the same array given to many
tasks — is found by identity (its owning object, address and length, as joblib does by object
identity) and not copied again while its owner is alive and its chunk open.
"""

from __future__ import annotations

import functools
import pickle
import re
import weakref
from typing import Any

from ._core import Arena, buffer_address
from .errors import InvalidParameterError, compose_message

#: Buffers of at least this many bytes travel in shared memory unless ``max_nbytes`` says otherwise
#: (measured: below ~64 KiB, copying through the socket is as fast as placing in shared memory).
DEFAULT_MAX_NBYTES = 64 * 1024
MMAP_MODES = ("r", "r+", "w+", "c")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_max_nbytes(value: Any) -> int | None:
    """joblib's ``max_nbytes``: bytes as an int, or a string such as "1M" or "100K"; None: never."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad_max_nbytes(value)
    if isinstance(value, int):
        if value < 0:
            raise _bad_max_nbytes(value)
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", value.upper())
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise _bad_max_nbytes(value)


def _bad_max_nbytes(value: Any) -> InvalidParameterError:
    return InvalidParameterError(
        compose_message(
            f"max_nbytes={value!r} is not a size.",
            'use a number of bytes, a string such as "1M" or "100K", or None to send every',
            "argument inside the message (no shared memory)",
        ),
        code="FJ201",
    )


def check_mmap_mode(mode: Any) -> str:
    """The mapping mode of arguments in workers; None (joblib: no memmapping) is a private copy."""
    if mode is None:
        return "c"
    if mode not in MMAP_MODES:
        raise InvalidParameterError(
            compose_message(
                f"mmap_mode={mode!r} is not a mapping mode.",
                "use 'r' (read-only, the default), 'r+' or 'w+' (writable, shared by the tasks),",
                "'c' (writable copy-on-write, private to each task) or None (same as 'c')",
            ),
            code="FJ201",
        )
    return mode


def _owner(exporter: Any) -> Any:
    """The object that owns the memory of ``exporter`` (an array's ultimate base)."""
    seen = 0
    while seen < 64:
        base = getattr(exporter, "base", None)
        if base is None:
            base = getattr(exporter, "obj", None) if isinstance(exporter, memoryview) else None
        if base is None:
            return exporter
        exporter, seen = base, seen + 1
    return exporter


class ArgumentStore:
    """A call's arguments in shared memory: places buffers, remembers them, frees chunks."""

    def __init__(self) -> None:
        self.arena = Arena()
        # (id(owner), address, nbytes) -> (chunk, offset, nbytes), valid while the owner lives.
        self._placed: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self._guards: dict[tuple[int, int, int], weakref.ref] = {}
        self._by_chunk: dict[int, list[tuple[int, int, int]]] = {}

    def place(self, buffer: pickle.PickleBuffer) -> tuple[int, int, int]:
        """Where ``buffer`` lies in the arena: ``(chunk, offset, nbytes)``; copied on first sight."""
        view = memoryview(buffer)
        owner = _owner(view.obj)
        key = (id(owner), buffer_address(buffer), view.nbytes)
        found = self._placed.get(key)
        if found is not None:
            return found
        place = self.arena.place(buffer)
        try:
            guard = weakref.ref(owner, functools.partial(_forget, weakref.ref(self), key))
        except TypeError:  # bytes and the like: no weak references, so no reuse
            return place
        self._placed[key] = place
        self._guards[key] = guard
        self._by_chunk.setdefault(place[0], []).append(key)
        return place

    def hold(self, chunks: set[int]) -> None:
        for chunk in chunks:
            self.arena.hold(chunk)
        for closed in self.arena.sweep():
            self._forget_chunk(closed)

    def release(self, chunks: set[int]) -> None:
        """The job that held ``chunks`` completed."""
        for chunk in chunks:
            if self.arena.release(chunk):
                self._forget_chunk(chunk)

    def unmapped(self, tokens: list[int]) -> None:
        """A worker reported that nothing there maps these chunks (tokens) any more."""
        if tokens:
            for chunk in self.arena.unmapped(tokens):
                self._forget_chunk(chunk)

    def forget(self, key: tuple[int, int, int]) -> None:
        place = self._placed.pop(key, None)
        self._guards.pop(key, None)
        if place is not None:
            keys = self._by_chunk.get(place[0])
            if keys is not None and key in keys:
                keys.remove(key)

    def _forget_chunk(self, chunk: int) -> None:
        for key in self._by_chunk.pop(chunk, []):
            self._placed.pop(key, None)
            self._guards.pop(key, None)


def _forget(store: weakref.ref, key: tuple[int, int, int], _dead: weakref.ref) -> None:
    """The owner of a placed buffer died: its memory may be reused, so forget the placement.
    (The store is held weakly, so that it is freed, with its shared memory, as soon as unused.)"""
    live_store = store()
    if live_store is not None:
        live_store.forget(key)
