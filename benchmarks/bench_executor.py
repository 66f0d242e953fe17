"""ferrojob.Executor side by side with multiprocessing.Pool and ProcessPoolExecutor, 2 workers.

    python benchmarks/bench_executor.py              # all scenarios
    python benchmarks/bench_executor.py roundtrip    # some of them

Every pool is started (and warmed by one run) before it is timed: these are steady-state costs.

map:       map of x*2 over 100,000 ints, each library's default chunking (ferrojob: "auto"), and
           ProcessPoolExecutor with chunksize=1000. Targets: within 1.5x of multiprocessing.Pool,
           >= 3x faster than ProcessPoolExecutor(chunksize=1000).
roundtrip: 10,000 submit + result() of a tiny task, one at a time. Target: >= 2x faster than
           ProcessPoolExecutor.
bigresult: 20 submits each returning a 50 MB array, all results collected. Target: >= 10x faster
           than ProcessPoolExecutor.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

from harness import measure, report, run_scenarios
from workloads import double, fresh_array

N_WORKERS = 2


def _pools() -> tuple:
    import ferrojob

    return (
        ferrojob.Executor(max_workers=N_WORKERS),
        multiprocessing.Pool(N_WORKERS),
        concurrent.futures.ProcessPoolExecutor(max_workers=N_WORKERS),
    )


def _close(executor, pool, process_pool) -> None:
    executor.shutdown()
    pool.close()
    pool.join()
    process_pool.shutdown()


def map_() -> None:
    executor, pool, process_pool = _pools()
    data = range(100_000)
    try:
        timings = {
            "ferrojob": measure(lambda: list(executor.map(double, data)), 7),
            "multiprocessing.Pool.map": measure(lambda: pool.map(double, data), 7),
            "ProcessPoolExecutor(chunksize=1000)": measure(
                lambda: list(process_pool.map(double, data, chunksize=1000)), 3
            ),
        }
    finally:
        _close(executor, pool, process_pool)
    report(
        "map: x*2 over 100,000 ints",
        timings,
        targets={"multiprocessing.Pool.map": 1.0, "ProcessPoolExecutor(chunksize=1000)": 3},
    )


def roundtrip() -> None:
    executor, pool, process_pool = _pools()

    def one_at_a_time(submitter) -> None:
        for i in range(10_000):
            submitter.submit(double, i).result()

    try:
        timings = {
            "ferrojob": measure(lambda: one_at_a_time(executor), 3),
            "ProcessPoolExecutor": measure(lambda: one_at_a_time(process_pool), 3),
            "multiprocessing.Pool.apply": measure(lambda: [pool.apply(double, (i,)) for i in range(10_000)], 3),
        }
    finally:
        _close(executor, pool, process_pool)
    report("roundtrip: 10,000 submit + result(), one at a time", timings, targets={"ProcessPoolExecutor": 2.5})


def bigresult() -> None:
    executor, pool, process_pool = _pools()
    n_items = 50_000_000 // 8

    def collect(submitter) -> None:
        futures = [submitter.submit(fresh_array, i, n_items) for i in range(20)]
        results = [future.result() for future in futures]
        assert results[-1][0] == 19.0

    try:
        timings = {
            "ferrojob": measure(lambda: collect(executor), 5),
            "ProcessPoolExecutor": measure(lambda: collect(process_pool), 3),
            "multiprocessing.Pool.map": measure(
                lambda: pool.starmap(fresh_array, [(i, n_items) for i in range(20)]), 3
            ),
        }
    finally:
        _close(executor, pool, process_pool)
    report("bigresult: 20 tasks returning 50 MB arrays", timings, targets={"ProcessPoolExecutor": 12})


SCENARIOS = {"map": map_, "roundtrip": roundtrip, "bigresult": bigresult}


def main(names: list[str]) -> None:
    run_scenarios(SCENARIOS, names, f"{N_WORKERS} workers")


if __name__ == "__main__":
    main(sys.argv[1:])
