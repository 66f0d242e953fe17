"""Loading ferrojob's own container (written by ``dump`` to a file name): its pickle over its
sections, arrays shaped as joblib's ``load`` shapes them (``numpy.memmap`` when mapped,
native byte order on request), or data only with ``allow_pickle=False``."""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
from typing import Any

from .. import _core
from ..errors import DamagedFileError
from . import safe_pickle
from .options import in_native_order, memmap_mode, warn_not_mapped


def load_container(path: str, mmap_mode: str | None, allow_pickle: bool, native: bool) -> Any:
    """The object of the container at ``path``; raises ``NotADumpFileError`` for a file that is
    no container (the caller then tries the other formats)."""
    data, buffers, mapped, offsets = _core.read_dump(path, mmap_mode)
    if mmap_mode is not None and not mapped and buffers:
        warn_not_mapped(f"{path} is compressed", mmap_mode)
    if allow_pickle and mapped and mmap_mode is not None:
        return _ArrayUnpickler(data, buffers, offsets, path, mmap_mode, native=False).load()
    if allow_pickle:
        return _ArrayUnpickler(data, buffers, offsets, path, None, native).load()
    try:
        return safe_pickle.loads(data, buffers)
    except DamagedFileError as error:
        raise DamagedFileError(f"{path}: {error}", code="FJ401") from error.__cause__


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a dump, shaping the arrays built over its buffers as joblib's ``load`` does:
    with ``mmap_mode``, each is a ``numpy.memmap`` that says where it lies in the file
    (``filename``, ``offset``, ``mode``); with ``native``, a big-endian array comes back in this
    machine's byte order (``ensure_native_byte_order``). The caller keeps ``buffers`` alive
    while it loads (their ids identify them)."""

    _NUMPY_FROMBUFFER = frozenset({("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")})

    def __init__(
        self, data: bytes, buffers: list[Any], offsets: list[int], path: str, mode: str | None, native: bool
    ) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._shape = _ArrayShaping(
            {id(buffer): offset for buffer, offset in zip(buffers, offsets, strict=True)},
            os.path.abspath(path),
            memmap_mode(mode),
            native,
        )

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) in self._NUMPY_FROMBUFFER and (self._shape.mode is not None or self._shape.native):
            # Not a method of this unpickler: its memo keeps what this returns, and a reference
            # back would make a cycle that keeps every loaded buffer alive until a collection.
            return functools.partial(self._shape, found)
        return found


@dataclasses.dataclass(frozen=True, slots=True)
class _ArrayShaping:
    """How ``_ArrayUnpickler`` shapes each array: ``offsets`` of the buffers (by id) in ``path``,
    mapped with ``mode`` (or None), made native-endian if ``native``."""

    offsets: dict[int, int]
    path: str
    mode: str | None
    native: bool

    def __call__(self, original: Any, buffer: Any, *args: Any) -> Any:
        array = original(buffer, *args)
        if self.native and not array.dtype.isnative:
            return in_native_order(array)
        offset = self.offsets.get(id(buffer))
        if self.mode is None or offset is None:
            return array
        import numpy as np

        mapped = array.view(np.memmap)
        mapped.filename, mapped.offset, mapped.mode = self.path, offset, self.mode
        return mapped
