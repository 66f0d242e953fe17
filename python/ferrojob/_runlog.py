"""What a call did, batch by batch, as it runs: the records a ``RunReport`` is made of.

Collection is always on and costs a few clock readings per batch (never per task): the driver
counts batches and the time spent reading the caller's input; a session that knows more (the
process pool: which worker, when it started, unpickling, computing and pickling in the worker,
bytes by route) adds one ``BatchRecord`` per batch it ran. Every time is ``time.monotonic()``
seconds, a clock the workers share with the parent.
"""

from __future__ import annotations

from time import monotonic
from typing import NamedTuple

#: A long-lived recorder (an Executor's) keeps at most this many batch records, the newest.
MAX_RECORDS = 100_000
#: Whether ``Parallel`` calls record (``benchmarks/bench_report.py`` turns it off to measure
#: what recording costs; ``last_report`` is then None).
COLLECT = True


class BatchRecord(NamedTuple):
    """One batch (or one piece of a batch run again in pieces) as it ran."""

    batch_id: int
    #: The index of its first task in the call, and how many tasks it held.
    first_task: int
    n_tasks: int
    #: Where it ran: "pid 4242", a thread's name, a cluster worker's address.
    worker: str
    #: Handed to the backend; the worker began it (unpickling); the worker was done with it
    #: (results pickled); the parent had its results.
    submitted: float
    started: float
    ended: float
    received: float
    #: Seconds in the worker: unpickling the arguments, running the tasks, pickling results.
    load_seconds: float
    run_seconds: float
    dump_seconds: float
    #: Seconds in the parent: pickling the batch, unpickling its results.
    pickle_seconds: float
    unpickle_seconds: float
    #: Bytes to the worker: the pickle, buffers in shared memory, and of those the bytes this
    #: batch copied there (0 when they were placed by an earlier batch of the call).
    bytes_pickled_to: int
    bytes_shared_to: int
    bytes_copied_to: int
    #: Of those copied, bytes of buffers an earlier batch of the call had placed already: a
    #: large object sent again (the data plane places each at most once per call; not 0 means
    #: it could not, e.g. a small buffer whose chunk was recycled).
    bytes_resent_to: int
    #: Bytes back: the results' pickle and their buffers in shared memory.
    bytes_pickled_from: int
    bytes_shared_from: int
    #: "done", "failed" (a task raised), "crashed", "timeout" or "cancelled".
    outcome: str = "done"


class WorkerEvent(NamedTuple):
    """Something that happened to a worker: "started", "recycled", "retired", "crashed",
    "timeout", "killed" or "exited"."""

    at: float
    worker: str
    what: str
    detail: str = ""


class CallRecorder:
    """The records of one call (``Parallel``), or of an executor's life."""

    __slots__ = (
        "backend",
        "batch_sizes",
        "ended",
        "events",
        "input_seconds",
        "n_dropped",
        "n_tasks",
        "n_workers",
        "records",
        "started",
        "threads_per_worker",
    )

    def __init__(self, backend: str, n_workers: int) -> None:
        self.backend = backend
        self.n_workers = n_workers
        self.started = monotonic()
        self.ended: float | None = None
        #: The size of every batch dispatched, in order (the driver's).
        self.batch_sizes: list[int] = []
        #: Tasks run in this process (sequential calls, which have no batches); else None.
        self.n_tasks: int | None = None
        #: Seconds the driver spent reading the caller's iterable (a generator's own work).
        self.input_seconds = 0.0
        self.records: list[tuple] = []
        self.events: list[WorkerEvent] = []
        #: Records dropped to stay within ``MAX_RECORDS``.
        self.n_dropped = 0
        #: BLAS/OpenMP threads each worker may start (None: unknown, or not a process pool).
        self.threads_per_worker: int | None = None

    def record(self, fields: tuple) -> None:
        """Keep one batch: ``BatchRecord``'s fields as a plain tuple (made into records when a
        report is built: a NamedTuple per batch costs more than the rest of the recording), its
        worker as a pid (an int) or a name."""
        records = self.records
        if len(records) >= MAX_RECORDS:
            del records[: MAX_RECORDS // 10]
            self.n_dropped += MAX_RECORDS // 10
        records.append(fields)

    def batch_records(self) -> list[BatchRecord]:
        """Every batch kept, as ``BatchRecord``s."""
        made = []
        for fields in list(self.records):
            record = BatchRecord._make(fields)
            if isinstance(record.worker, int):
                record = record._replace(worker=f"pid {record.worker}")
            made.append(record)
        return made

    def finish(self) -> None:
        self.ended = monotonic()
