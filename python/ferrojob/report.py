"""Run reports: where the time of a call went, read as data, as text or as a picture.

Every ``Parallel`` call records its batches as they run (see ``ferrojob._runlog``; a few clock
readings per batch); ``Parallel(...).last_report`` turns the last call's records into a
``RunReport``, and ``Executor.report()`` does the same for an executor's life so far.

Example::

    >>> from ferrojob import Parallel, delayed
    >>> parallel = Parallel(n_jobs=2)
    >>> squares = parallel(delayed(pow)(i, 2) for i in range(100))
    >>> report = parallel.last_report
    >>> report.n_tasks, sum(report.batch_sizes)
    (100, 100)
    >>> report.save("run.html")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from ._runlog import BatchRecord, CallRecorder, WorkerEvent

__all__ = ["BatchRecord", "RunReport", "WorkerEvent", "WorkerUsage"]


class WorkerUsage(NamedTuple):
    """One worker's share of a call: seconds busy with batches (unpickling, computing,
    pickling) and idle (the rest of the call's wall time), and the batches it ran."""

    busy: float
    idle: float
    n_batches: int


@dataclass(frozen=True)
class RunReport:
    """What one call did: the numbers, the batches, the worker events, and advice.

    Times are seconds; bytes are counted by route (a pickle, or shared memory). ``advice`` holds
    short sentences, each naming a cause of lost time with the numbers that prove it; empty
    when nothing stands out.
    """

    #: The backend and the number of workers the call ran on.
    backend: str
    n_workers: int
    #: Seconds from the call's start to its end.
    wall: float
    n_tasks: int
    n_batches: int
    #: The size of each batch, in dispatch order.
    batch_sizes: list[int]
    #: Per worker ("pid 4242", a thread's name...): busy and idle seconds.
    workers: dict[str, WorkerUsage]
    #: Bytes sent to workers and received from them (pickles and shared memory together).
    bytes_to_workers: int
    bytes_from_workers: int
    #: Of ``bytes_to_workers``: the part that went through shared memory, and the part of that
    #: a batch had to copy there (an array placed once per call is copied once).
    bytes_shared_to_workers: int
    bytes_copied_to_workers: int
    #: Of those copied, bytes of large objects placed again within the call (should be 0).
    bytes_resent_to_workers: int
    #: Of ``bytes_from_workers``: the part that came back through shared memory.
    bytes_shared_from_workers: int
    #: Pickling in the parent (arguments) and the workers (results), and unpickling in the
    #: workers (arguments) and the parent (results).
    pickle_seconds: float
    unpickle_seconds: float
    #: Seconds the worker processes (or threads) spent running tasks, all of them together.
    compute_seconds: float
    #: Seconds spent reading the caller's iterable (a generator's own work).
    input_seconds: float
    #: Worker events during the call: started, recycled, retired, crashed, timeout, killed...
    events: list[WorkerEvent]
    #: Every batch as it ran (backends that record them: processes, threads).
    batches: list[BatchRecord] = field(repr=False)
    #: BLAS/OpenMP threads each worker process may start (None: not capped or unknown).
    threads_per_worker: int | None = None
    #: Short sentences: what made the call slower than it could be, with numbers.
    advice: list[str] = field(default_factory=list)
    #: The call's start on ``time.monotonic()``'s clock (batch times are on it too).
    started: float = 0.0
    #: The oldest batches, left out to bound the record (a long-lived Executor keeps its newest
    #: 100,000): they are in no field above but ``n_batches`` and ``batch_sizes``.
    n_batches_dropped: int = 0

    @classmethod
    def from_recorder(cls, recorder: CallRecorder, n_tasks: int | None = None) -> RunReport:
        """The report of what ``recorder`` holds (an unfinished one: up to now)."""
        from time import monotonic

        from ._advice import advise

        batches = sorted(_place_lost(recorder.batch_records()), key=lambda record: (record.started, record.batch_id))
        # An executor's submissions bypass the driver: its batches are those that ran.
        sizes = recorder.batch_sizes or [record.n_tasks for record in sorted(batches, key=lambda r: r.submitted)]
        ended = recorder.ended if recorder.ended is not None else monotonic()
        wall = max(ended - recorder.started, 0.0)
        busy: dict[str, float] = {}
        counts: dict[str, int] = {}
        for record in batches:
            busy[record.worker] = busy.get(record.worker, 0.0) + (record.ended - record.started)
            counts[record.worker] = counts.get(record.worker, 0) + 1
        workers = {
            name: WorkerUsage(seconds, max(wall - seconds, 0.0), counts[name]) for name, seconds in sorted(busy.items())
        }
        shared_to = sum(record.bytes_shared_to for record in batches)
        shared_from = sum(record.bytes_shared_from for record in batches)
        report = cls(
            backend=recorder.backend,
            n_workers=recorder.n_workers,
            wall=wall,
            n_tasks=sum(sizes) if n_tasks is None else n_tasks,
            n_batches=len(sizes),
            batch_sizes=list(sizes),
            workers=workers,
            bytes_to_workers=sum(record.bytes_pickled_to for record in batches) + shared_to,
            bytes_from_workers=sum(record.bytes_pickled_from for record in batches) + shared_from,
            bytes_shared_to_workers=shared_to,
            bytes_copied_to_workers=sum(record.bytes_copied_to for record in batches),
            bytes_resent_to_workers=sum(record.bytes_resent_to for record in batches),
            bytes_shared_from_workers=shared_from,
            pickle_seconds=sum(record.pickle_seconds + record.dump_seconds for record in batches),
            unpickle_seconds=sum(record.load_seconds + record.unpickle_seconds for record in batches),
            compute_seconds=sum(record.run_seconds for record in batches),
            input_seconds=recorder.input_seconds,
            events=sorted(recorder.events),
            batches=batches,
            threads_per_worker=recorder.threads_per_worker,
            started=recorder.started,
            n_batches_dropped=recorder.n_dropped,
        )
        report.advice.extend(advise(report))
        return report

    # -- reading it -----------------------------------------------------------------------

    @property
    def utilisation(self) -> float:
        """The share of the workers' time (``n_workers`` x ``wall``) spent running tasks."""
        capacity = self.n_workers * self.wall
        return self.compute_seconds / capacity if capacity > 0 else 0.0

    def task_seconds(self) -> list[float]:
        """A duration per task: each batch's compute time shared evenly among its tasks (the
        engine times batches, not single tasks)."""
        durations: list[float] = []
        for record in self.batches:
            if record.n_tasks and record.outcome == "done":
                durations.extend([record.run_seconds / record.n_tasks] * record.n_tasks)
        return durations

    def __str__(self) -> str:
        from ._report_render import text

        return text(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report: ``.html`` a self-contained page (timeline, histogram of task
        durations, numbers, advice; no script, nothing fetched), ``.svg`` the timeline alone,
        ``.txt`` the text summary.

        Example::

            >>> report.save("run.html")  # doctest: +SKIP
        """
        from ._report_render import html, svg_timeline, text
        from ._settings import REPORT_FORMATS

        name = os.fspath(path)
        suffix = os.path.splitext(name)[1].lower()
        if suffix not in REPORT_FORMATS:
            raise ValueError(
                f"RunReport.save({name!r}): cannot tell the format from {suffix or 'no suffix'!r}. "
                "Name the file .html (the full report), .svg (the timeline) or .txt (the summary)."
            )
        render = {"html": html, "svg": svg_timeline, "text": text}[REPORT_FORMATS[suffix]]
        content = render(self)
        with open(name, "w", encoding="utf-8") as file:
            file.write(content)


#: Outcomes of a batch whose worker was lost (no timing came back from it).
_LOST = ("crashed", "timeout", "cancelled")


def _place_lost(records: list[BatchRecord]) -> list[BatchRecord]:
    """A batch lost with its worker sent no times back: it is taken to have started when the
    worker was done with its batch before (or when it was submitted, if later) and to have run
    until the loss was seen."""
    last_end: dict[str, float] = {}
    placed = []
    for record in sorted(records, key=lambda record: record.received):
        if record.outcome in _LOST:
            began = max(record.submitted, last_end.get(record.worker, record.submitted))
            record = record._replace(started=began, ended=record.received)
        last_end[record.worker] = record.ended
        placed.append(record)
    return placed
