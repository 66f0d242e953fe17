"""What a worker reports when a job fails, and how the parent turns the report into an error.

The worker pickles one of these (by reference: both sides import this module) as the payload of
a ``Failed`` reply; the parent rebuilds the exception the user sees from it.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from ._pickling import dumps_result, type_name
from .errors import RemoteTraceback


class TaskRaised(NamedTuple):
    """The task at ``offset`` of the batch raised. ``rebuild`` says how to recreate the exception
    (see ``_worker._exception_payload``): ``"pickle"`` or ``"parts"`` with ``data``, or None."""

    offset: int
    rebuild: str | None
    data: bytes | None
    type_name: str
    message: str
    traceback: str


class ResultUnpicklable(NamedTuple):
    """The result of the task at ``offset`` cannot be pickled back."""

    offset: int
    type_name: str
    reason: str


class ArgumentsUnloadable(NamedTuple):
    """The batch's arguments could not be unpickled in the worker."""

    type_name: str
    message: str
    traceback: str


FailureReport = TaskRaised | ResultUnpicklable | ArgumentsUnloadable

#: Exit code of a worker whose socket to the parent broke under it (a task closed fd 3).
CHANNEL_LOST_EXIT = 121
#: Exit code of a worker whose initializer raised.
INITIALIZER_FAILED_EXIT = 122


def dumps(report: FailureReport) -> bytes:
    return pickle.dumps(report, protocol=5)


def loads(payload: bytes) -> FailureReport:
    report = pickle.loads(payload)
    if not isinstance(report, (TaskRaised, ResultUnpicklable, ArgumentsUnloadable)):
        raise TypeError(f"a worker sent {type(report).__name__} as its failure report")
    return report


def traceback_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def raised(error: BaseException, offset: int) -> TaskRaised:
    """The report of ``error``, raised by the task at ``offset`` of its batch."""
    rebuild, data = _exception_payload(error)
    return TaskRaised(offset, rebuild, data, type_name(error), str(error), traceback_text(error))


def _exception_payload(error: BaseException) -> tuple[str | None, bytes | None]:
    """How the parent can rebuild ``error``: ("pickle", bytes), ("parts", bytes) or (None, None).

    An exception whose ``__init__`` takes other arguments than its ``args`` pickles but does not
    unpickle; for those, send its class, ``args`` and ``__dict__`` and rebuild without ``__init__``.
    """
    try:
        data = dumps_result(error)[0]
        pickle.loads(data)
        return "pickle", data
    except Exception:
        pass
    try:
        return "parts", dumps_result((type(error), error.args, dict(vars(error))))[0]
    except Exception:
        return None, None


def to_exception(report: TaskRaised, where: str) -> BaseException:
    """The exception a task raised, rebuilt in the parent, with its remote traceback as
    ``__cause__`` (``where`` names the task: "task 3: f(3)")."""
    exception = _rebuild(report.rebuild, report.data)
    if exception is None:
        exception = RuntimeError(f"{report.type_name}: {report.message}")
    header = f"Traceback of {where} in its worker process:\n"
    exception.__cause__ = RemoteTraceback(header + report.traceback)
    return exception


def _rebuild(how: str | None, data: bytes | None) -> BaseException | None:
    try:
        if how == "pickle":
            exception = pickle.loads(data)  # type: ignore[arg-type]
        elif how == "parts":
            cls, args, state = pickle.loads(data)  # type: ignore[arg-type]
            exception = cls.__new__(cls, *args)
            exception.args = args
            exception.__dict__.update(state)
        else:
            return None
    except Exception:
        return None
    return exception if isinstance(exception, BaseException) else None


def settle(
    results: list[Any],
    describe: Callable[[int], str],
    in_slot: Callable[[BaseException], Any] | None = None,
    failed: list[int] | None = None,
) -> list[Any]:
    """Results collected with ``return_exceptions``: each ``TaskRaised`` report in place of a
    result becomes the exception it describes (``describe(offset)`` names the task), or
    ``in_slot(exception)`` to tell it apart from a task that returned an exception. ``failed``:
    the offsets of the reports, when the worker listed them (else every slot is looked at)."""
    wrap = in_slot or _bare
    if failed is None:
        failed = [offset for offset, value in enumerate(results) if type(value) is TaskRaised]
    for offset in failed:
        report = results[offset]
        if type(report) is TaskRaised:
            results[offset] = wrap(to_exception(report, describe(offset)))
    return results


def _bare(error: BaseException) -> BaseException:
    return error
