"""What a worker reports when a job fails, and how the parent turns the report into an error.

The worker pickles one of these (by reference: both sides import this module) as the payload of
a ``Failed`` reply; the parent rebuilds the exception the user sees from it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskRaised:
    """The task at ``offset`` of the batch raised. ``rebuild`` says how to recreate the exception
    (see ``_worker._exception_payload``): ``"pickle"`` or ``"parts"`` with ``data``, or None."""

    offset: int
    rebuild: str | None
    data: bytes | None
    type_name: str
    message: str
    traceback: str


@dataclass(frozen=True)
class ResultUnpicklable:
    """The result of the task at ``offset`` cannot be pickled back."""

    offset: int
    type_name: str
    reason: str


@dataclass(frozen=True)
class ArgumentsUnloadable:
    """The batch's arguments could not be unpickled in the worker."""

    type_name: str
    message: str
    traceback: str


FailureReport = TaskRaised | ResultUnpicklable | ArgumentsUnloadable


def dumps(report: FailureReport) -> bytes:
    return pickle.dumps(report, protocol=5)


def loads(payload: bytes) -> FailureReport:
    report = pickle.loads(payload)
    if not isinstance(report, (TaskRaised, ResultUnpicklable, ArgumentsUnloadable)):
        raise TypeError(f"a worker sent {type(report).__name__} as its failure report")
    return report
