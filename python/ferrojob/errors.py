"""Exception types of ferrojob.

Every error subclasses the builtin a joblib user already catches (``TypeError``, ``ValueError``,
``TimeoutError``, ``RuntimeError``), so existing ``except`` clauses keep working, and carries a
stable ``code`` naming its kind. Messages follow rustc's shape: what happened, then a ``help:``
line with the corrected call.

Example::

    >>> from ferrojob import Parallel
    >>> try:
    ...     Parallel(n_jobs=2)(abs)
    ... except TypeError as error:
    ...     print(error.code)
    FJ001
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

__all__ = [
    "DamagedFileError",
    "FerrojobError",
    "InvalidParameterError",
    "NoClusterError",
    "NotADumpFileError",
    "ParallelUsageError",
    "RefusedContentError",
    "RemoteTraceback",
    "TaskTimeoutError",
    "UnknownBackendError",
    "UnpicklableError",
    "WorkerCrashedError",
    "WorkerStartError",
    "compose_message",
]


def compose_message(summary: str, *help_lines: str) -> str:
    """Join a one-line summary and an indented ``help:`` block into a message."""
    if not help_lines:
        return summary
    first, *rest = help_lines
    lines = [summary, f"  help: {first}"]
    lines.extend(f"        {line}" for line in rest)
    return "\n".join(lines)


class FerrojobError(Exception):
    """Base class of every ferrojob error; ``code`` names the kind (``"FJ001"``, ...)."""

    code: str = "FJ000"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __reduce__(self):  # keep the code when the error crosses a process boundary
        return (_rebuild, (type(self), str(self), self.code))


def _rebuild(cls, message, code):
    return cls(message, code=code)


class ParallelUsageError(FerrojobError, TypeError):
    """``Parallel`` or ``delayed`` was called with something they cannot run.

    Codes: FJ001 not an iterable of delayed calls, FJ002 an item is not a delayed call (forgot
    ``delayed``), FJ003 ``delayed(f)`` not called, FJ004 an item is a bare function, FJ005
    ``delayed`` of a non-callable, FJ006 a single delayed call instead of an iterable of them.
    """

    code = "FJ001"


class UnpicklableError(FerrojobError, TypeError, pickle.PicklingError):
    """An argument (FJ101) or a result (FJ102) cannot cross the process boundary."""

    code = "FJ101"


class InvalidParameterError(FerrojobError, ValueError):
    """A parameter of ``Parallel`` or ``parallel_config`` has an invalid value (FJ201)."""

    code = "FJ201"


def invalid_parameter(summary: str, *help_lines: str) -> InvalidParameterError:
    """The error of a setting that means nothing: what was given, then how to fix it (FJ201)."""
    return InvalidParameterError(compose_message(summary, *help_lines), code="FJ201")


class UnknownBackendError(InvalidParameterError):
    """No backend is registered under the requested name (FJ202)."""

    code = "FJ202"


class _TaskReport:
    """What a report on a stopped or lost task carries (set by the process pool; None elsewhere):
    the task's position in the iterable, its function, its arguments' repr, the worker's peak
    memory in bytes, its last ~4 KiB of stderr and its pid."""

    task_index: int | None = None
    function: str | None = None
    args_repr: str | None = None
    peak_rss: int | None = None
    stderr_tail: str = ""
    pid: int | None = None


class WorkerCrashedError(_TaskReport, FerrojobError, RuntimeError):
    """A worker process died while running a task (FJ301): a segfault, ``os._exit``, an OOM kill.

    Attributes (when raised by the process pool): ``task_index``, ``function``, ``args_repr``,
    ``exitcode`` or ``signal`` (and ``signal_name``), ``peak_rss`` (bytes), ``stderr_tail`` (the
    worker's last ~4 KiB of stderr), ``likely_cause``, ``pid``."""

    code = "FJ301"
    exitcode: int | None = None
    signal: int | None = None
    signal_name: str | None = None
    likely_cause: str | None = None


class WorkerStartError(FerrojobError, RuntimeError):
    """Worker processes died before running anything, three in a row (FJ303): a broken
    ``sys.path``, ``sitecustomize`` or initializer. Carries the last worker's ``stderr_tail``."""

    code = "FJ303"
    stderr_tail: str = ""
    attempts: int = 0


def _task_timeout_error() -> type:
    # Also a multiprocessing.TimeoutError (what joblib raises), so that ported `except` clauses
    # still catch it. Built on first use: importing multiprocessing costs ~10 ms, which neither
    # `import ferrojob` nor a worker's start-up should pay.
    import multiprocessing

    class TaskTimeoutError(_TaskReport, FerrojobError, multiprocessing.TimeoutError, TimeoutError):
        """A task ran longer than ``Parallel(timeout=...)`` seconds; its worker was stopped
        (FJ302). A ``TimeoutError`` and a ``multiprocessing.TimeoutError``.

        Attributes (process pool): ``task_index``, ``function``, ``args_repr``, ``timeout``,
        and ``stack``: the Python stack of the worker's main thread when it was stopped."""

        code = "FJ302"
        timeout: float | None = None
        stack: str | None = None

    TaskTimeoutError.__module__ = __name__
    TaskTimeoutError.__qualname__ = "TaskTimeoutError"
    return TaskTimeoutError


if TYPE_CHECKING:

    class TaskTimeoutError(_TaskReport, FerrojobError, TimeoutError):
        code = "FJ302"
        timeout: float | None
        stack: str | None


def __getattr__(name: str) -> Any:
    if name == "TaskTimeoutError":
        cls = globals()["TaskTimeoutError"] = _task_timeout_error()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TaskCancelledError(_TaskReport, FerrojobError, RuntimeError):
    """A task was killed on request — ``Executor.kill(future)`` — while it ran (its worker was
    killed and replaced) or before it started (FJ304). Attributes as ``WorkerCrashedError``'s
    ``task_index``, ``function``, ``args_repr`` and ``pid`` (None if it never started)."""

    code = "FJ304"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as ``__cause__``.

    Python prints it above the re-raised exception ("The above exception was the direct cause"),
    so the user sees where in their function the error happened.
    """

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n\n" + self.traceback_text.rstrip()


class DamagedFileError(FerrojobError, ValueError):
    """A ferrojob dump (or cache entry) is truncated or corrupted (FJ401); the message names the
    file and the damaged part."""

    code = "FJ401"


class NotADumpFileError(FerrojobError, ValueError):
    """``load`` was given a file that is not a ferrojob dump (FJ402) — for instance one written by
    ``joblib.dump`` when joblib is not installed to read it."""

    code = "FJ402"


class RefusedContentError(FerrojobError, pickle.UnpicklingError):
    """``load(..., allow_pickle=False)`` found more than data in a file (FJ403): a global other
    than numpy's array machinery and plain builtins, an object array, or a dtype with fields or
    flags. Also a ``pickle.UnpicklingError``."""

    code = "FJ403"


class NoClusterError(FerrojobError, ValueError):
    """``backend="dask"`` or ``"ray"`` found no cluster to run on (FJ501); the message says how
    to start or connect to one."""

    code = "FJ501"
