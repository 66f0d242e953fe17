"""Large arguments in shared memory: each buffer placed once per call, whatever the task count.

A call's out-of-band buffers (pickle protocol 5: numpy arrays, bytearrays, ...) are copied into
the Rust arena of its session. The same memory passed again — the same array given to many
tasks — is found by identity (its owning object, address and length, as joblib does by object
identity) and not copied again while its owner is alive and its chunk open.
"""

from __future__ import annotations

import functools
import pickle
import weakref
from typing import Any

from ._core import Arena, buffer_address


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

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
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
