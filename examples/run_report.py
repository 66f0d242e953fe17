"""A run report of a real call, as README shows it: a timeline per worker, task durations,
the numbers and the advice.

    python examples/run_report.py [OUTPUT_DIR]      # default: docs/

The call: 40 tasks each summing a slice of a 64 MB array (the array goes to shared memory once),
one of them much longer than the others (a straggler), and one that kills its worker
(``return_exceptions=True``: the crash is a result, the worker is replaced). It writes
``run-report.html`` (the whole report, one file) and ``run-report.svg`` (the timeline), and
prints the text summary.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from ferrojob import Parallel, delayed


def work(data: np.ndarray, index: int) -> float:
    if index == 13:
        os._exit(1)  # a crash: the report marks it, and the worker is replaced
    seconds = 0.6 if index == 31 else 0.04 + 0.01 * (index % 5)
    deadline = time.perf_counter() + seconds
    total = 0.0
    while time.perf_counter() < deadline:
        total += float(data[index * 1000 : (index + 1) * 1000].sum())
    return total


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs")
    data = np.random.default_rng(0).random(8 << 20)  # 64 MB
    parallel = Parallel(n_jobs=2, batch_size=1, return_exceptions=True)
    parallel(delayed(work)(data, index) for index in range(40))
    report = parallel.last_report
    assert report is not None
    for suffix in ("html", "svg"):
        report.save(os.path.join(out, f"run-report.{suffix}"))
    print(report)


if __name__ == "__main__":
    main()
