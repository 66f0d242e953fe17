"""Batches run again in pieces (``return_exceptions``): when a worker dies or a task is stopped,
the tasks of its batch that did not finish run again as smaller pieces, and the batch's results
are put back together, slot by slot, before the call sees them."""

from __future__ import annotations

from typing import Any

from .._tasks import Batch
from .base import Completion


class Piece:
    """Consecutive tasks of a scheduled batch, sent as one unit of work: the whole batch, or a
    part of it run again (``offset``: where the part starts in the batch; ``retried``: a single
    task run again because its worker died while running it). ``collect``: every task runs, and
    one that fails leaves its error in its slot (``return_exceptions``)."""

    __slots__ = ("batch", "batch_id", "collect", "offset", "retried", "whole_size")

    def __init__(
        self,
        batch_id: int,
        batch: Batch,
        collect: bool,
        offset: int = 0,
        retried: bool = False,
        whole_size: int | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.batch = batch
        self.collect = collect
        self.offset = offset
        self.retried = retried
        self.whole_size = len(batch) if whole_size is None else whole_size

    @property
    def is_whole(self) -> bool:
        return self.offset == 0 and len(self.batch) == self.whole_size

    def part(self, start: int, end: int, retried: bool = False) -> Piece:
        batch = self.batch.part(start, end)
        return Piece(self.batch_id, batch, self.collect, self.offset + start, retried, self.whole_size)

    def around(self, offset: int) -> tuple[list[Piece], Piece]:
        """The parts before and after the task at ``offset`` (those that exist), and that task."""
        parts = [self.part(start, end) for start, end in ((0, offset), (offset + 1, len(self.batch))) if start < end]
        return parts, self.part(offset, offset + 1, retried=True)


class Assemblies:
    """Batches being put back together from pieces."""

    def __init__(self) -> None:
        self._slots: dict[int, tuple[list[Any], list[int], list[float]]] = {}

    def expect(self, piece: Piece) -> None:
        """``piece``'s batch will come back in pieces: start collecting its slots."""
        if piece.batch_id not in self._slots:
            self._slots[piece.batch_id] = ([None] * piece.whole_size, [piece.whole_size], [0.0])

    def fill(self, piece: Piece, results: list[Any], elapsed: float) -> Completion | None:
        """Put a piece's results in place: the batch's completion once every slot is filled
        (at once for a whole batch that never came apart)."""
        entry = self._slots.get(piece.batch_id)
        if entry is None:
            if piece.is_whole:
                return Completion(piece.batch_id, results, elapsed)
            self.expect(piece)
            entry = self._slots[piece.batch_id]
        slots, missing, spent = entry
        slots[piece.offset : piece.offset + len(results)] = results
        missing[0] -= len(results)
        spent[0] += elapsed
        if missing[0]:
            return None
        del self._slots[piece.batch_id]
        return Completion(piece.batch_id, slots, spent[0])

    def clear(self) -> None:
        self._slots.clear()
