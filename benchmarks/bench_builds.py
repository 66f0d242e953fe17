"""One ferrojob workload set under several builds or engine paths, side by side, in one run.

    python benchmarks/bench_builds.py                      # this interpreter: Linux path vs portable path
    python benchmarks/bench_builds.py --python A=/venv-a/bin/python B=/venv-b/bin/python
                                                           # two installs (e.g. stable-ABI wheel vs not)

Each variant runs every workload in a fresh interpreter (a warm-up, then the median of 3 runs);
variants take turns, round after round, so that the machine's noise falls on all of them alike.
Reported: the median of the rounds, the spread (min-max), and each variant's time relative to the
first.

tiny:       Parallel, 100,000 tasks of x*2 (per-task overhead: pickling, batching, the socket)
roundtrip:  Executor, 10,000 submit + result() one at a time (per-call latency)
bigresult:  Parallel, 20 results of 50 MB each (shared memory: segments, mappings)
bigarg:     Parallel, one 400 MB array, 40 slices summed (arguments through shared memory)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap

WORKLOADS = {
    "tiny": """
        from ferrojob import Parallel, delayed
        from workloads import double
        data = range(100_000)
        run = lambda: Parallel(n_jobs=2)(delayed(double)(x) for x in data)
    """,
    "roundtrip": """
        from ferrojob import Executor
        from workloads import double
        executor = Executor(max_workers=2)
        def run():
            for i in range(10_000):
                executor.submit(double, i).result()
    """,
    "bigresult": """
        from ferrojob import Parallel, delayed
        from workloads import fresh_array
        run = lambda: Parallel(n_jobs=2)(delayed(fresh_array)(i, 50_000_000 // 8) for i in range(20))
    """,
    "bigarg": """
        import numpy as np
        from ferrojob import Parallel, delayed
        from workloads import slice_sum
        big = np.random.default_rng(0).random(400_000_000 // 8)
        run = lambda: Parallel(n_jobs=2)(delayed(slice_sum)(big, i, 40) for i in range(40))
    """,
}

TIMER = """
import statistics, time
run()  # warm-up: workers started, modules imported
times = []
for _ in range(3):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def time_once(python: str, env: dict[str, str], workload: str) -> float:
    source = textwrap.dedent(WORKLOADS[workload]) + TIMER
    done = subprocess.run(
        [python, "-c", source],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{workload} failed under {python}:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def variants(pythons: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    base = {key: value for key, value in os.environ.items() if key != "FERROJOB_PORTABLE"}
    if not pythons:
        return {
            "linux path": (sys.executable, base),
            "portable path": (sys.executable, {**base, "FERROJOB_PORTABLE": "1"}),
        }
    chosen = {}
    for spec in pythons:
        label, _, python = spec.partition("=")
        if not python:
            sys.exit(f"--python wants LABEL=PATH, got {spec!r}")
        chosen[label] = (python, base)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", choices=[[], *WORKLOADS], default=[])
    parser.add_argument("--python", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chosen = variants(args.python)
    print(f"{os.cpu_count()} CPUs, {args.rounds} rounds, variants: {', '.join(chosen)}")
    for workload in args.workloads or WORKLOADS:
        times: dict[str, list[float]] = {label: [] for label in chosen}
        for _ in range(args.rounds):
            for label, (python, env) in chosen.items():
                times[label].append(time_once(python, env, workload))
        first = statistics.median(next(iter(times.values())))
        print(f"\n{workload}")
        for label, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"  {label:<16} {median * 1000:9.1f} ms  (spread {min(seconds) * 1000:.1f}-{max(seconds) * 1000:.1f})"
                f"  {median / first:5.3f}x the first"
            )


if __name__ == "__main__":
    main()
