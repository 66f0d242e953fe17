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


def parse_max_nbytes(value: Any, name: str = "max_nbytes") -> int | None:
    """A size as joblib spells ``max_nbytes``: bytes as an int, or a string such as "1M", "100K"
    or "2GB"; None: no size (never / no limit). ``name`` is the parameter, for the error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad_max_nbytes(value, name)
    if isinstance(value, int):
        if value < 0:
            raise _bad_max_nbytes(value, name)
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", value.upper())
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise _bad_max_nbytes(value, name)


def _bad_max_nbytes(value: Any, name: str) -> InvalidParameterError:
    return InvalidParameterError(
        compose_message(
            f"{name}={value!r} is not a size.",
            'use a number of bytes, a string such as "1M", "100K" or "2GB", or None'
            + (
                " to send every argument inside the message (no shared memory)"
                if name == "max_nbytes"
                else " (no limit)"
            ),
        ),
        code="FJ201",
    )


def validate_mmap_mode(mode: Any, meaning_of_none: str) -> str | None:
    """``mode`` if it is numpy's mapping mode or None, else ``InvalidParameterError`` (FJ201)
    saying what None means where it is used."""
    if mode is None or mode in MMAP_MODES:
        return mode
    raise InvalidParameterError(
        compose_message(
            f"mmap_mode={mode!r} is not a mapping mode.",
            "use 'r' (read-only), 'r+' or 'w+' (writable, shared), 'c' (writable copy-on-write,",
            f"private), or None ({meaning_of_none})",
        ),
        code="FJ201",
    )


def check_mmap_mode(mode: Any) -> str:
    """The mapping mode of arguments in workers; None (joblib: no memmapping) is a private copy."""
    return validate_mmap_mode(mode, "a private copy for each task, as 'c'") or "c"


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
    """A session's arguments in shared memory. The Rust arena owns placement, the chunks jobs
    hold and their recycling; this side only names each buffer by its owner's identity (so the
    same array passed to many tasks is copied once) and tells the arena when an owner dies (its
    memory, and so its identity, may then be reused)."""

    def __init__(self) -> None:
        self.arena = Arena()
        self._guards: dict[tuple[int, int, int], weakref.ref] = {}

    def identity(self, buffer: pickle.PickleBuffer) -> tuple[int, int, int] | None:
        """How the arena recognises ``buffer`` when it is passed again (its owner's ``id()``,
        address and length), guarded so that it is forgotten when the owner dies; None for
        memory whose owner cannot be watched (bytes): placed afresh each time."""
        view = memoryview(buffer)
        owner = _owner(view.obj)
        identity = (id(owner), buffer_address(buffer), view.nbytes)
        if identity not in self._guards:
            try:
                self._guards[identity] = weakref.ref(owner, functools.partial(_forget, weakref.ref(self), identity))
            except TypeError:
                return None
        return identity

    def place(self, buffer: pickle.PickleBuffer) -> tuple[int, int, int, int]:
        """Where ``buffer`` lies in the arena (an opaque placement); copied on first sight."""
        return self.arena.place(buffer, self.identity(buffer))

    def forget(self, identity: tuple[int, int, int]) -> None:
        if self._guards.pop(identity, None) is not None:
            self.arena.forget(identity)


def _forget(store: weakref.ref, identity: tuple[int, int, int], _dead: weakref.ref) -> None:
    """The owner of a placed buffer died: its memory may be reused, so forget the placement.
    (The store is held weakly, so that it is freed, with its shared memory, as soon as unused.)"""
    live_store = store()
    if live_store is not None:
        live_store.forget(identity)
