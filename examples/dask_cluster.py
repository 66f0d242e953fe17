"""The same Parallel call, on a dask.distributed cluster.

python examples/dask_cluster.py                        # a local cluster of 2 processes
python examples/dask_cluster.py tcp://scheduler:8786   # a running cluster
"""

import sys

import numpy as np
from dask.distributed import Client, LocalCluster
from ferrojob import Parallel, delayed, parallel_config


def column_norm(matrix, j):
    return float(np.linalg.norm(matrix[:, j]))


def main():
    if len(sys.argv) > 1:
        client, cluster = Client(sys.argv[1]), None
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)
    try:
        matrix = np.random.default_rng(0).random((2_000, 500))  # sent to the cluster once
        with parallel_config(backend="dask"):
            norms = Parallel()(delayed(column_norm)(matrix, j) for j in range(matrix.shape[1]))
        print(f"{len(norms)} column norms computed on {len(client.nthreads())} dask workers;")
        print(f"largest {max(norms):.3f}, matches numpy: {np.allclose(norms, np.linalg.norm(matrix, axis=0))}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
