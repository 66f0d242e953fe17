"""Where the user's code is on the stack: warnings point there, not into ferrojob."""

from __future__ import annotations

import os
import sys

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
