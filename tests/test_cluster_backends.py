"""backend="dask" on a real LocalCluster(n_workers=2, processes=True) and backend="ray" on a
local ray.init(num_cpus=2): the same contract, checked on both."""

from __future__ import annotations

import os
import time
import traceback

import pytest

np = pytest.importorskip("numpy")

from ferrojob import Parallel, TaskTimeoutError, delayed, parallel_config
from ferrojob.backends import remote


@pytest.fixture(scope="module", params=["dask", "ray"])
def cluster(request):
    """The backend's name, with its cluster running; ``.client`` for dask."""
    if request.param == "dask":
        distributed = pytest.importorskip("distributed")
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = distributed.Client(local)
        yield Cluster("dask", client)
        client.close()
        local.close()
    else:
        ray = pytest.importorskip("ray")
        # Functions of this module travel by reference: ray's workers must be able to import it.
        here = os.path.dirname(os.path.abspath(__file__))
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": here}}
        )
        yield Cluster("ray", None)
        ray.shutdown()


class Cluster:
    def __init__(self, backend: str, client) -> None:
        self.backend = backend
        self.client = client


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


def record_then_sleep(x, folder):
    open(os.path.join(folder, str(x)), "w").close()
    if x == 0:
        raise ValueError("first fails")
    time.sleep(0.5)
    return x


def test_results_in_order_in_other_processes(cluster):
    with parallel_config(backend=cluster.backend):
        assert Parallel()(delayed(square)(i) for i in range(100)) == [i * i for i in range(100)]
        pids = set(Parallel()(delayed(os.getpid)() for _ in range(20)))
    assert os.getpid() not in pids
    if cluster.client is not None:
        assert pids <= set(cluster.client.run(os.getpid).values())


def test_closures_lambdas_and_generators(cluster):
    offset = 7
    with parallel_config(backend=cluster.backend):
        assert Parallel()(delayed(lambda x: x + offset)(i) for i in range(5)) == [7, 8, 9, 10, 11]
        ordered = Parallel(return_as="generator")(delayed(square)(i) for i in range(30))
        assert next(ordered) == 0 and list(ordered) == [i * i for i in range(1, 30)]
        unordered = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(30))
        assert sorted(unordered) == [i * i for i in range(30)]


def test_errors_keep_their_type_and_traceback(cluster):
    with parallel_config(backend=cluster.backend):
        with pytest.raises(KeyError, match="bad 3") as info:
            Parallel()(delayed(fail_on)(i, 3) for i in range(10))
    shown = "".join(traceback.format_exception(info.value))
    assert "fail_on" in shown


def test_big_arguments_are_sent_once_per_call(cluster, monkeypatch):
    sent = []
    original = remote.SharedArguments._send

    def counting(self, value):
        sent.append(value.nbytes)
        return original(self, value)

    monkeypatch.setattr(remote.SharedArguments, "_send", counting)
    big = np.arange(2_000_000, dtype=np.float64)
    with parallel_config(backend=cluster.backend):
        sums = Parallel(batch_size=1)(delayed(lambda a, i: float(a[i::10].sum()))(big, i) for i in range(10))
    assert sum(sums) == float(big.sum())
    assert sent == [big.nbytes]


def test_an_error_cancels_the_rest(cluster, tmp_path):
    with parallel_config(backend=cluster.backend):
        with pytest.raises(ValueError, match="first fails"):
            Parallel(batch_size=1, pre_dispatch="all")(delayed(record_then_sleep)(i, str(tmp_path)) for i in range(40))
    # The cluster runs the next call after what the failed one left running: by then, a task the
    # error did not cancel would have started (and left its file).
    assert Parallel(backend=cluster.backend)(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    assert len(os.listdir(tmp_path)) < 40


def test_timeout(cluster):
    with parallel_config(backend=cluster.backend):
        with pytest.raises(TimeoutError) as info:
            Parallel(timeout=0.5, batch_size=1)(delayed(time.sleep)(s) for s in (0, 5))
    assert isinstance(info.value, TaskTimeoutError)


def test_a_dask_client_given_explicitly(cluster):
    if cluster.client is None:
        pytest.skip("dask only: ray has no client object")
    with parallel_config(backend="dask", client=cluster.client):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize(
    ("backend", "message"),
    [("dask", "found no dask client"), ("ray", "ray.init()")],
)
def test_no_cluster_gives_a_clear_error(script, backend, message):
    done = script(
        f"""
        from ferrojob import NoClusterError, Parallel, delayed
        try:
            Parallel(backend={backend!r})(delayed(abs)(1) for _ in range(2))
        except NoClusterError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert message in done.stdout


def test_return_exceptions_on_the_cluster(cluster):
    with parallel_config(backend=cluster.backend, return_exceptions=True):
        results = Parallel()(delayed(fail_on)(i, 3) for i in range(6))
    assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
    assert isinstance(results[3], KeyError) and "fail_on" in str(results[3].__cause__)


def nap_on(x, slow, seconds=15):
    time.sleep(seconds if x == slow else 0)
    return x


def test_a_batch_waiting_for_a_worker_is_not_timed(cluster):
    # Six 2 s tasks on two slots, all launched at once: the last ones wait 4 s for a worker, which
    # is not running past timeout=3 (the clock starts when the batch starts).
    with parallel_config(backend=cluster.backend):
        results = Parallel(timeout=3, batch_size=1, pre_dispatch="all")(delayed(nap_on)(i, i, 2) for i in range(6))
    assert results == list(range(6))


def test_return_exceptions_with_a_timeout_on_the_cluster(cluster):
    with parallel_config(backend=cluster.backend, return_exceptions=True):
        results = Parallel(timeout=3, batch_size=3)(delayed(nap_on)(i, 4) for i in range(6))
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 2, 3, 5]
    assert isinstance(results[4], TaskTimeoutError)


def test_a_cluster_call_reports_its_batches_per_cluster_worker(cluster):
    parallel = Parallel(n_jobs=2, backend=cluster.backend, batch_size=2)
    assert parallel(delayed(square)(i) for i in range(6)) == [i * i for i in range(6)]
    report = parallel.last_report
    assert report.backend == cluster.backend and report.n_batches == 3 and len(report.batches) == 3
    assert report.workers and all(":" in name for name in report.workers)  # host:pid of the worker process
    assert all(record.submitted <= record.started <= record.received for record in report.batches)
