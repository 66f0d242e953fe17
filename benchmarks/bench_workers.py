"""Workers you can shape: memory caps, side by side with joblib (loky), n_jobs=2.

    python benchmarks/bench_workers.py            # all scenarios
    python benchmarks/bench_workers.py leaky      # some of them

bigobject: 200 tiny tasks that each take the same pure-Python object (a dict of 100,000 short
       lists, ~13 MB pickled): ferrojob pickles it once per call and each worker loads it once;
       joblib pickles and sends it with every batch.
leaky: 2,000 tasks that each leak 5 MB; ferrojob with max_worker_memory="300MB" replaces a
       worker past it before its next task, joblib has no such cap (its workers keep growing).
       Reports each library's time and the peak resident memory of its worker processes.

Each scenario runs in a fresh interpreter, so the peak of reaped workers (RUSAGE_CHILDREN) is
that library's alone.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness import record, run_scenarios

N_JOBS = 2
RUN = """
import json, resource, sys, time
sys.path.insert(0, {here!r})
from workloads import leak
library = {library!r}
start = time.perf_counter()
if library == "ferrojob":
    import ferrojob
    with ferrojob.Parallel(n_jobs={n_jobs}, max_worker_memory="300MB") as parallel:
        parallel(ferrojob.delayed(leak)(5) for _ in range({n_tasks}))
else:
    import joblib
    joblib.Parallel(n_jobs={n_jobs})(joblib.delayed(leak)(5) for _ in range({n_tasks}))
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)  # reap the workers: their peak is counted
elapsed = time.perf_counter() - start
if library == "ferrojob":
    ferrojob.backends.processes._SHARED.shutdown()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({{"seconds": elapsed, "peak": peak}}))
"""


def _run(library: str, n_tasks: int) -> dict:
    import os

    code = RUN.format(here=os.path.dirname(os.path.abspath(__file__)), library=library, n_jobs=N_JOBS, n_tasks=n_tasks)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def leaky() -> None:
    n_tasks = 2000
    results = {name: _run(name, n_tasks) for name in ("ferrojob", "joblib (loky)")}
    print(f"\nleaky: {n_tasks} tasks leaking 5 MB each  (target: ferrojob workers peak under ~350 MB)")
    for name, result in results.items():
        print(f"  {name:<16} {result['seconds'] * 1000:9.1f} ms   peak worker RSS {result['peak'] / 1e6:7.0f} MB")
    record("leaky: 2,000 tasks leaking 5 MB each", {name: r["seconds"] for name, r in results.items()})


def bigobject() -> None:
    import ferrojob
    import joblib
    from harness import measure, report
    from workloads import first_key_length

    table = {i: [i, str(i), float(i)] for i in range(100_000)}
    n_tasks = 200
    timings = {
        "ferrojob": measure(
            lambda: ferrojob.Parallel(n_jobs=N_JOBS)(
                ferrojob.delayed(first_key_length)(table, i) for i in range(n_tasks)
            ),
            3,
        ),
        "joblib (loky)": measure(
            lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(first_key_length)(table, i) for i in range(n_tasks)),
            1,
            warm_up=False,
        ),
    }
    report("bigobject: 200 tiny tasks sharing a 13 MB dict", timings, targets={"joblib (loky)": 20})


SCENARIOS = {"bigobject": bigobject, "leaky": leaky}


def main(names: list[str]) -> None:
    run_scenarios(SCENARIOS, names, f"n_jobs={N_JOBS}")


if __name__ == "__main__":
    main(sys.argv[1:])
