"""ferrojob's dask backend vs joblib's, on the same LocalCluster(n_workers=2, processes=True).

    python benchmarks/bench_dask.py

overhead: 10,000 tasks of x*2 (per-task cost on the cluster)
bigargs:  one 200 MB array passed to 20 tasks (scattered once per call, or not)
mixed:    20,000 tiny tasks that each take one 80 MB array and sum a slice of it: per-task cost
          and a large argument in one call. Target: >= 4x joblib's dask backend.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from harness import measure, print_verdicts, report, save_results
from workloads import double, slice_sum


def main() -> None:
    import ferrojob
    import joblib
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, LocalCluster(n_workers=2)")
        data = range(10_000)

        def ours_tiny():
            with ferrojob.parallel_config(backend="dask"):
                return ferrojob.Parallel()(ferrojob.delayed(double)(x) for x in data)

        def theirs_tiny():
            with joblib.parallel_config(backend="dask"):
                return joblib.Parallel()(joblib.delayed(double)(x) for x in data)

        assert ours_tiny() == theirs_tiny()
        report(
            "overhead: 10,000 tasks of x*2",
            {"ferrojob (dask)": measure(ours_tiny, 3), "joblib (dask)": measure(theirs_tiny, 3)},
            baseline="ferrojob (dask)",
        )

        big = np.random.default_rng(0).random(200_000_000 // 8)

        def ours_big():
            with ferrojob.parallel_config(backend="dask"):
                return ferrojob.Parallel()(ferrojob.delayed(slice_sum)(big, i, 20) for i in range(20))

        def theirs_big():
            with joblib.parallel_config(backend="dask"):
                return joblib.Parallel()(joblib.delayed(slice_sum)(big, i, 20) for i in range(20))

        assert np.isclose(sum(ours_big()), sum(theirs_big()))
        report(
            "bigargs: one 200 MB array, 20 tasks summing slices",
            {"ferrojob (dask)": measure(ours_big, 3), "joblib (dask)": measure(theirs_big, 3)},
            baseline="ferrojob (dask)",
        )
        medium = np.random.default_rng(1).random(80_000_000 // 8)

        def ours_mixed():
            with ferrojob.parallel_config(backend="dask"):
                return ferrojob.Parallel()(ferrojob.delayed(slice_sum)(medium, i, 20_000) for i in range(20_000))

        def theirs_mixed():
            with joblib.parallel_config(backend="dask"):
                return joblib.Parallel()(joblib.delayed(slice_sum)(medium, i, 20_000) for i in range(20_000))

        assert np.isclose(sum(ours_mixed()), sum(theirs_mixed()))
        report(
            "mixed: 20,000 tiny tasks sharing one 80 MB array",
            {"ferrojob (dask)": measure(ours_mixed, 3), "joblib (dask)": measure(theirs_mixed, 3)},
            baseline="ferrojob (dask)",
            targets={"joblib (dask)": 4},
        )
        print_verdicts()
        save_results()
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
