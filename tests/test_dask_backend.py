"""backend="dask" on a real LocalCluster(n_workers=2, processes=True)."""

from __future__ import annotations

import os
import time

import pytest

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

from ferrojob import NoClusterError, Parallel, TaskTimeoutError, delayed, parallel_config  # noqa: E402
from ferrojob.backends import dask as dask_backend  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


def pid(_=None):
    return os.getpid()


def test_results_in_order_on_the_cluster(client):
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(square)(i) for i in range(100)) == [i * i for i in range(100)]
        pids = set(Parallel()(delayed(pid)(i) for i in range(20)))
    worker_pids = set(client.run(os.getpid).values())
    assert pids <= worker_pids and os.getpid() not in pids


def test_closures_and_lambdas(client):
    offset = 7
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(lambda x: x + offset)(i) for i in range(5)) == [7, 8, 9, 10, 11]


def test_client_given_explicitly(client):
    with parallel_config(backend="dask", client=client):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_generators(client):
    with parallel_config(backend="dask"):
        ordered = Parallel(return_as="generator")(delayed(square)(i) for i in range(30))
        assert next(ordered) == 0 and list(ordered) == [i * i for i in range(1, 30)]
        unordered = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(30))
        assert sorted(unordered) == [i * i for i in range(30)]


def test_errors_keep_their_type_and_traceback(client):
    with parallel_config(backend="dask"):
        with pytest.raises(KeyError, match="bad 3") as info:
            Parallel()(delayed(fail_on)(i, 3) for i in range(10))
    assert "fail_on" in "".join(__import__("traceback").format_tb(info.value.__traceback__))


def test_big_arguments_are_scattered_once_per_call(client, monkeypatch):
    sent = []
    original = dask_backend.DaskSession._scatter

    def counting(self, value):
        sent.append(value.nbytes)
        return original(self, value)

    monkeypatch.setattr(dask_backend.DaskSession, "_scatter", counting)
    big = np.arange(2_000_000, dtype=np.float64)
    with parallel_config(backend="dask"):
        sums = Parallel(batch_size=1)(delayed(lambda a, i: float(a[i::10].sum()))(big, i) for i in range(10))
    assert sum(sums) == float(big.sum())
    assert sent == [big.nbytes]


def record_then_sleep(x, folder):
    open(os.path.join(folder, str(x)), "w").close()
    if x == 0:
        raise ValueError("first fails")
    time.sleep(0.5)
    return x


def test_an_error_cancels_the_rest(client, tmp_path):
    with parallel_config(backend="dask"):
        with pytest.raises(ValueError, match="first fails"):
            Parallel(batch_size=1, pre_dispatch="all")(delayed(record_then_sleep)(i, str(tmp_path)) for i in range(40))
    time.sleep(1.5)
    assert len(os.listdir(tmp_path)) < 40
    assert Parallel(backend="dask")(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_timeout(client):
    with parallel_config(backend="dask"):
        with pytest.raises(TimeoutError) as info:
            Parallel(timeout=0.5, batch_size=1)(delayed(time.sleep)(s) for s in (0, 5))
    assert isinstance(info.value, TaskTimeoutError)


def test_no_client_gives_a_clear_error(script):
    done = script(
        """
        from ferrojob import NoClusterError, Parallel, delayed
        try:
            Parallel(backend="dask")(delayed(abs)(1) for _ in range(2))
        except NoClusterError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "found no dask client" in done.stdout
    assert "Client()" in done.stdout
