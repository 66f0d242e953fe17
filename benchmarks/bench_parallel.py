"""ferrojob vs joblib (loky) vs multiprocessing.Pool, side by side, n_jobs=2.

    python benchmarks/bench_parallel.py            # all scenarios
    python benchmarks/bench_parallel.py tiny cold  # some of them

tiny:   100,000 tasks of x*2 (per-task overhead)
medium: 1,000 tasks of 2 ms busy work (scheduling efficiency: ideal is n × 2 ms / 2)
cold:   a fresh interpreter imports the library and runs 2 tasks on 2 workers
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time

from harness import measure, report, run_scenarios
from workloads import busy, double

N_JOBS = 2


def tiny() -> None:
    import ferrojob
    import joblib

    data = range(100_000)
    with multiprocessing.get_context("fork").Pool(N_JOBS) as pool:
        timings = {
            "ferrojob": measure(lambda: ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(double)(x) for x in data), 5),
            "joblib (loky)": measure(
                lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(double)(x) for x in data), 5
            ),
            "multiprocessing.Pool.map": measure(lambda: pool.map(double, data), 5),
            "serial for loop": measure(lambda: [double(x) for x in data], 5),
        }
    report("tiny: 100,000 tasks of x*2", timings, targets={"joblib (loky)": 3})


def medium() -> None:
    import ferrojob
    import joblib

    n, ms = 1000, 2.0
    ideal = n * ms / 1000 / N_JOBS
    with multiprocessing.get_context("fork").Pool(N_JOBS) as pool:
        timings = {
            "ferrojob": measure(
                lambda: ferrojob.Parallel(n_jobs=N_JOBS)(ferrojob.delayed(busy)(ms) for _ in range(n)), 3
            ),
            "joblib (loky)": measure(
                lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(busy)(ms) for _ in range(n)), 3
            ),
            "multiprocessing.Pool.map": measure(lambda: pool.map(busy, [ms] * n), 3),
        }
    report("medium: 1,000 tasks of 2 ms busy work", timings, note=f"ideal {ideal * 1000:.0f} ms")
    for name, seconds in timings.items():
        print(f"  {name:<34} {100 * (seconds / ideal - 1):+8.1f}% vs ideal")


COLD = {
    "ferrojob": "from ferrojob import Parallel, delayed",
    "joblib (loky)": "from joblib import Parallel, delayed",
}


def cold() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    timings = {}
    for name, import_line in COLD.items():
        program = f"{import_line}\nfrom workloads import double\nParallel(n_jobs={N_JOBS})(delayed(double)(x) for x in range(2))\n"
        runs = []
        for _ in range(7):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", program], check=True, cwd=here)
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    timings["bare interpreter (python -c pass)"] = time.perf_counter() - start
    report("cold: fresh interpreter, import + 2 tasks on 2 workers", timings, targets={"joblib (loky)": 3})


SCENARIOS = {"tiny": tiny, "medium": medium, "cold": cold}


def main(names: list[str]) -> None:
    run_scenarios(SCENARIOS, names, f"n_jobs={N_JOBS}")


if __name__ == "__main__":
    main(sys.argv[1:])
