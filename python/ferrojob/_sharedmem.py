"""Large arguments in shared memory: each buffer placed once per call, whatever the task count.

A call's out-of-band buffers (pickle protocol 5: numpy arrays, bytearrays, ...) are copied into
the Rust arena of its session. The same memory passed again — the same array given to many
tasks — is found by identity (its owning object, address and length, as joblib does by object
identity) and not copied again while its owner is alive and its chunk open.

An owner that can be weakly referenced (an array) is watched, and its placement kept across the
calls of a session while it lives. One that cannot (``bytes`` under ``np.frombuffer``, a shared
object's pickle) is kept alive until the call ends instead — its identity cannot be reused
meanwhile — and its placement is forgotten then: placed once per call.
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
        # Owners that cannot be watched, kept alive until the call ends (see the module docs).
        self._pinned: dict[tuple[int, int, int], Any] = {}

    def identity(self, buffer: pickle.PickleBuffer) -> tuple[int, int, int]:
        """How the arena recognises ``buffer`` when it is passed again (its owner's ``id()``,
        address and length): guarded so that it is forgotten when the owner dies, or, for an
        owner that cannot be watched (bytes), pinned until the call ends."""
        view = memoryview(buffer)
        owner = _owner(view.obj)
        identity = (id(owner), buffer_address(buffer), view.nbytes)
        if identity not in self._guards and identity not in self._pinned:
            try:
                self._guards[identity] = weakref.ref(owner, functools.partial(_forget, weakref.ref(self), identity))
            except TypeError:
                self._pinned[identity] = owner
        return identity

    def new_call(self) -> None:
        """A call ends and the next begins: pinned owners are let go, and their placements
        forgotten (their ids may be reused once they are freed)."""
        pinned, self._pinned = self._pinned, {}
        for identity in pinned:
            self.arena.forget(identity)
        self.arena.new_call()

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
