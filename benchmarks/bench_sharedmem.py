"""Large numpy data: ferrojob's shared memory vs joblib (loky) vs multiprocessing.Pool, n_jobs=2.

    python benchmarks/bench_sharedmem.py                    # all scenarios
    python benchmarks/bench_sharedmem.py bigresult midargs  # some of them

bigresult: 20 tasks each returning a fresh 50 MB float64 array
midargs:   2,000 tasks each taking a different 200 KB array
bigarray:  one 400 MB array passed to 40 tasks, each summing its slice
bigarray-reused: the same, as the second and later calls of one `with Parallel()` block (ferrojob
           proves the array unchanged before reusing its copy; joblib reuses its memmap
           unchecked, and sends stale data if the array was modified in place)
"""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
from harness import measure, report, run_scenarios
from workloads import array_sum, fresh_array, slice_sum

N_JOBS = 2


def bigresult() -> None:
    import ferrojob
    import joblib

    n_tasks, n_items = 20, 50_000_000 // 8
    with multiprocessing.get_context("fork").Pool(N_JOBS) as pool:
        timings = {
            "ferrojob": measure(
                lambda: ferrojob.Parallel(n_jobs=N_JOBS)(
                    ferrojob.delayed(fresh_array)(i, n_items) for i in range(n_tasks)
                ),
                3,
            ),
            "joblib (loky)": measure(
                lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(fresh_array)(i, n_items) for i in range(n_tasks)),
                3,
            ),
            "multiprocessing.Pool.starmap": measure(
                lambda: pool.starmap(fresh_array, [(i, n_items) for i in range(n_tasks)]), 3
            ),
            "serial for loop": measure(lambda: [fresh_array(i, n_items) for i in range(n_tasks)], 3),
        }
    report("bigresult: 20 tasks each returning a fresh 50 MB array", timings, targets={"joblib (loky)": 12})


def midargs() -> None:
    import ferrojob
    import joblib

    rng = np.random.default_rng(0)
    arrays = [rng.random(200_000 // 8) for _ in range(2000)]
    with multiprocessing.get_context("fork").Pool(N_JOBS) as pool:
        timings = {
            "ferrojob": measure(
                lambda: ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(array_sum)(a) for a in arrays), 5
            ),
            "joblib (loky)": measure(
                lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(array_sum)(a) for a in arrays), 5
            ),
            "multiprocessing.Pool.map": measure(lambda: pool.map(array_sum, arrays), 5),
            "serial for loop": measure(lambda: [array_sum(a) for a in arrays], 5),
        }
    report("midargs: 2,000 tasks each taking a different 200 KB array", timings, targets={"joblib (loky)": 5})


def bigarray() -> None:
    import ferrojob
    import joblib

    n_tasks = 40
    big = np.random.default_rng(0).random(400_000_000 // 8)

    def run_ferrojob():
        return ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(slice_sum)(big, i, n_tasks) for i in range(n_tasks))

    def run_joblib(**options):
        return joblib.Parallel(n_jobs=N_JOBS, **options)(
            joblib.delayed(slice_sum)(big, i, n_tasks) for i in range(n_tasks)
        )

    expected = sum(slice_sum(big, i, n_tasks) for i in range(n_tasks))
    assert np.isclose(sum(run_ferrojob()), expected)
    timings = {
        "ferrojob": measure(run_ferrojob, 3),
        "joblib (loky, memmapping)": measure(run_joblib, 3),
        "joblib (loky, max_nbytes=None)": measure(lambda: run_joblib(max_nbytes=None), 1, warm_up=False),
        "serial for loop": measure(lambda: [slice_sum(big, i, n_tasks) for i in range(n_tasks)], 3),
    }
    report(
        "bigarray: one 400 MB array, 40 tasks summing slices",
        timings,
        targets={"joblib (loky, memmapping)": 1.0, "joblib (loky, max_nbytes=None)": 100},
    )


def bigarray_reused() -> None:
    import ferrojob
    import joblib

    big = np.arange(50_000_000, dtype=np.float64)  # 400 MB
    n_tasks = 40
    with ferrojob.Parallel(n_jobs=N_JOBS) as ours, joblib.Parallel(n_jobs=N_JOBS) as theirs:
        timings = {
            "ferrojob": measure(lambda: ours(ferrojob.delayed(slice_sum)(big, i, n_tasks) for i in range(n_tasks)), 5),
            "joblib (loky)": measure(
                lambda: theirs(joblib.delayed(slice_sum)(big, i, n_tasks) for i in range(n_tasks)), 5
            ),
        }
    report(
        "bigarray-reused: later calls of a block on one 400 MB array, 40 tasks",
        timings,
        targets={"joblib (loky)": 1.5},
        note="ferrojob checks the array is unchanged",
    )


SCENARIOS = {"bigresult": bigresult, "midargs": midargs, "bigarray": bigarray, "bigarray-reused": bigarray_reused}


def main(names: list[str]) -> None:
    run_scenarios(SCENARIOS, names, f"numpy {np.__version__}, n_jobs={N_JOBS}")


if __name__ == "__main__":
    main(sys.argv[1:])
