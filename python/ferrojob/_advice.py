"""The advice of a run report: each rule looks for one cause of lost time and, when the numbers
prove it, says so in one sentence with those numbers and what to do.

The rules read only the report (batches, wall time, worker counts), so they can be checked on
reports built on purpose. Thresholds are deliberately wide: a rule that speaks should be right.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cpus import cpu_count

if TYPE_CHECKING:
    from .report import RunReport

#: What a well-sized batch of work takes (Parallel's automatic batches aim at about this).
GOOD_BATCH_SECONDS = 0.02


def advise(report: RunReport) -> list[str]:
    """Every rule's sentence that applies to ``report``, in the order of ``RULES``."""
    return [sentence for rule in RULES if (sentence := rule(report)) is not None]


def seconds(value: float) -> str:
    """``value`` seconds, readably: 12 µs, 3.4 ms, 1.25 s."""
    if value < 1e-6:
        return f"{value * 1e9:.0f} ns"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def size(value: float) -> str:
    """``value`` bytes, readably: 512 B, 3.2 MB, 1.50 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def _done(report: RunReport) -> list:
    return [record for record in report.batches if record.outcome == "done"]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def tasks_too_small(report: RunReport) -> str | None:
    """Workers mostly idle while every batch is short: the fixed cost of a batch dominates."""
    done = _done(report)
    if len(done) < 2 or report.n_tasks == 0 or report.wall <= 0:
        return None
    if _input_is_slow(report):
        return None  # the input is the cause (see slow_input)
    median_run = _median([record.run_seconds for record in done])
    if report.utilisation >= 0.5 or median_run >= 0.005:
        return None
    per_task = report.compute_seconds / max(sum(record.n_tasks for record in done), 1)
    idle = report.n_workers * report.wall - report.compute_seconds
    per_batch = idle / max(len(done), 1)
    typical = int(_median([float(record.n_tasks) for record in done]))
    said = (
        f"tasks too small for the overhead: {report.n_tasks} tasks of {seconds(per_task)} each on "
        f"average, in {report.n_batches} batches (typically {typical} {'task' if typical == 1 else 'tasks'}); the workers computed "
        f"{report.utilisation:.0%} of the time, and each batch left them about {seconds(per_batch)} "
        "of idle worker time"
    )
    if report.compute_seconds < GOOD_BATCH_SECONDS * report.n_workers:
        return (
            f"{said}. The whole call is {seconds(report.compute_seconds)} of work: n_jobs=1 "
            "(in this process) would be faster"
        )
    fit = max(1, min(math.ceil(GOOD_BATCH_SECONDS / max(per_task, 1e-9)), report.n_tasks))
    return f'{said}. batch_size={fit} (about {seconds(GOOD_BATCH_SECONDS)} of work a batch) would fit, or "auto"'


def straggler(report: RunReport) -> str | None:
    """The call ended waiting on one batch, far longer than the others, with the rest idle."""
    done = _done(report)
    if len(done) < 2 or report.n_workers < 2 or report.wall <= 0:
        return None
    last = max(done, key=lambda record: record.ended)
    others = [record for record in done if record is not last]
    tail = last.ended - max(record.ended for record in others)
    typical = _median([record.run_seconds for record in others])
    if tail < 0.25 * report.wall or last.run_seconds < 4 * max(typical, 1e-6):
        return None
    if last.n_tasks == 1:
        which = f"task {last.first_task}"
    else:
        which = f"tasks {last.first_task}..{last.first_task + last.n_tasks - 1} (one batch)"
    return (
        f"one straggler held the call: {which} took {seconds(last.run_seconds)}, "
        f"{last.run_seconds / max(typical, 1e-6):.0f}x the median batch ({seconds(typical)}); for its "
        f"last {seconds(tail)} ({tail / report.wall:.0%} of the call) the other workers had nothing "
        "to do. Split it into smaller tasks, or submit the longest tasks first"
    )


#: Reading one delayed call costs about a microsecond at the least; a generator that takes far
#: longer per task does work of its own.
SLOW_INPUT_PER_TASK = 20e-6


def _input_is_slow(report: RunReport) -> bool:
    """Whether reading the caller's iterable took a good part of the call, at a cost per task
    far above what producing a delayed call costs, while the workers waited."""
    if report.wall <= 0 or report.n_tasks == 0:
        return False
    return (
        report.input_seconds >= 0.3 * report.wall
        and report.input_seconds / report.n_tasks >= SLOW_INPUT_PER_TASK
        and report.utilisation < 0.6
    )


def slow_input(report: RunReport) -> str | None:
    """The caller's iterable (a generator) produced tasks slower than the workers ran them."""
    if not _input_is_slow(report):
        return None
    share = report.input_seconds / report.wall
    return (
        f"workers starved by the input: reading the iterable took {seconds(report.input_seconds)} "
        f"of the call's {seconds(report.wall)} ({share:.0%}), {seconds(report.input_seconds / report.n_tasks)} "
        f"a task, while the workers computed {report.utilisation:.0%} of the time. Build the inputs "
        "before the call (a list), or move the slow part into the task"
    )


def large_object_resent(report: RunReport) -> str | None:
    """A large buffer was copied into shared memory again within the call."""
    resent = report.bytes_resent_to_workers
    if resent < 1 << 20:
        return None
    batches = sum(1 for record in report.batches if record.bytes_resent_to)
    return (
        f"a large object was sent again: {size(resent)} already placed in shared memory earlier in "
        f"this call were copied there again, by {batches} batches (ferrojob places each large "
        "object once per call; this is worth a bug report with this report attached)"
    )


def results_too_large(report: RunReport) -> str | None:
    """Results came back as large pickles, and (un)pickling them took a good part of the call."""
    done = _done(report)
    pickled = sum(record.bytes_pickled_from for record in done)
    dump = sum(record.dump_seconds for record in done)
    load = sum(record.unpickle_seconds for record in done)
    if pickled < 32 << 20 or report.wall <= 0 or dump + load < 0.2 * report.wall:
        return None
    return (
        f"results too large to pickle: {size(pickled)} came back as pickles; the workers spent "
        f"{seconds(dump)} pickling them and this process {seconds(load)} unpickling them "
        f"({(dump + load) / report.wall:.0%} of the call's {seconds(report.wall)}). Return numpy arrays "
        "(or bytes, bytearray): large buffers come back through shared memory, without pickling"
    )


def oversubscribed(report: RunReport) -> str | None:
    """Workers may start more BLAS/OpenMP threads, together, than there are cores."""
    threads = report.threads_per_worker
    cores = cpu_count()
    if threads is None or report.n_workers * threads <= cores:
        return None
    fair = max(cores // report.n_workers, 1)
    return (
        f"oversubscription: each of the {report.n_workers} workers may start {threads} BLAS/OpenMP "
        f"threads, {report.n_workers * threads} threads on {cores} cores. Use "
        f"parallel_config(inner_max_num_threads={fair}), or leave OMP_NUM_THREADS and its kin unset "
        "(ferrojob then caps each worker to cores / workers)"
    )


RULES: tuple[Callable[[RunReport], str | None], ...] = (
    tasks_too_small,
    straggler,
    slow_input,
    large_object_resent,
    results_too_large,
    oversubscribed,
)
