"""What run reports cost: the tiny workload with recording on and off, in one process, in turns.

    python benchmarks/bench_report.py [--rounds N]

tiny:   Parallel(n_jobs=2), 100,000 tasks of x*2 (README's tiny row; the most batches per second
        of any workload, so the per-batch recording shows most here)
small:  the same with batch_size=1 on 5,000 tasks (one batch per task: the worst case)
roundtrip: Executor, 2,000 submit + result() one at a time (an executor per setting)

Each round runs one call with recording on and one with it off (``ferrojob._runlog.COLLECT``),
alternating which goes first, on the same warm workers; reported: the median ratio of the rounds
(on / off) and its spread. The issue's bound: at most 2% slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ferrojob._runlog as runlog
from ferrojob import Parallel, delayed
from workloads import double

WORKLOADS = {
    "tiny": (lambda parallel: parallel(delayed(double)(x) for x in range(100_000)), {}),
    "small": (lambda parallel: parallel(delayed(double)(x) for x in range(5_000)), {"batch_size": 1}),
}


def timed(run, parallel: Parallel, collect: bool) -> float:
    runlog.COLLECT = collect
    start = time.perf_counter()
    run(parallel)
    return time.perf_counter() - start


def roundtrips(rounds: int) -> None:
    """Executor: 2,000 submit + result() one at a time, an executor made with recording on
    and one with it off, in turns."""
    from ferrojob import Executor

    executors = {}
    for collect in (True, False):
        runlog.COLLECT = collect
        executors[collect] = Executor(max_workers=2)
    runlog.COLLECT = True

    def run(collect: bool) -> float:
        executor = executors[collect]
        start = time.perf_counter()
        for i in range(2_000):
            executor.submit(double, i).result()
        return time.perf_counter() - start

    for collect in (True, False):
        run(collect)
    ratios, on_times, off_times = [], [], []
    for index in range(rounds):
        order = (True, False) if index % 2 else (False, True)
        seconds = {collect: run(collect) for collect in order}
        on_times.append(seconds[True])
        off_times.append(seconds[False])
        ratios.append(seconds[True] / seconds[False])
    for executor in executors.values():
        executor.shutdown()
    show("roundtrip", on_times, off_times, ratios)


def show(name: str, on_times: list[float], off_times: list[float], ratios: list[float]) -> None:
    quartiles = statistics.quantiles(sorted(ratios), n=4)
    print(
        f"{name:9} on {statistics.median(on_times) * 1e3:7.2f} ms   off {statistics.median(off_times) * 1e3:7.2f} ms   "
        f"on/off median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    rounds = parser.parse_args().rounds
    print(f"run report recording: on vs off, {rounds} rounds each, in turns\n")
    for name, (run, keywords) in WORKLOADS.items():
        with Parallel(n_jobs=2, **keywords) as parallel:
            for collect in (True, False):  # warm-up
                timed(run, parallel, collect)
            ratios, on_times, off_times = [], [], []
            for index in range(rounds):
                order = (True, False) if index % 2 else (False, True)
                seconds = {collect: timed(run, parallel, collect) for collect in order}
                on_times.append(seconds[True])
                off_times.append(seconds[False])
                ratios.append(seconds[True] / seconds[False])
        runlog.COLLECT = True
        show(name, on_times, off_times, ratios)
    roundtrips(rounds)


if __name__ == "__main__":
    main()
