"""Where the user's code is on the stack: warnings point there, not into ferrojob."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel(*also_skip: str) -> int:
    """The ``stacklevel`` that makes a warning issued by the caller of this function point at
    the first frame outside ferrojob (and outside the files ``also_skip`` names, e.g. the pickle
    module that called back into ferrojob)."""
    skipped = (_PACKAGE, *also_skip)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    return level


def user_location() -> tuple[str, int, dict[str, Any]] | None:
    """The file, line and globals of the first frame outside ferrojob: where a warning given
    later, from wherever, should point (``warn_at``)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    return frame.f_code.co_filename, frame.f_lineno, frame.f_globals


def warn_at(location: tuple[str, int, dict[str, Any]] | None, message: str, category: type[Warning]) -> None:
    """Warn as if from ``location`` (see ``user_location``), under the warning filters of its
    module; from the caller's first frame outside ferrojob when it is unknown."""
    if location is None:
        warnings.warn(message, category, stacklevel=user_stacklevel())
        return
    filename, lineno, module_globals = location
    warnings.warn_explicit(
        message,
        category,
        filename,
        lineno,
        module=module_globals.get("__name__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
    )
