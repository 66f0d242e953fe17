"""backend="ray" on a local ray.init(num_cpus=2)."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")
np = pytest.importorskip("numpy")

from ferrojob import Parallel, delayed, parallel_config  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # Functions of this module travel by reference: ray's workers must be able to import it.
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    yield
    ray.shutdown()


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


def test_results_in_order_and_in_other_processes(local_ray):
    with parallel_config(backend="ray"):
        assert Parallel()(delayed(square)(i) for i in range(50)) == [i * i for i in range(50)]
        pids = set(Parallel()(delayed(os.getpid)() for _ in range(10)))
    assert os.getpid() not in pids


def test_closures_generators_and_errors(local_ray):
    offset = 3
    with parallel_config(backend="ray"):
        assert Parallel()(delayed(lambda x: x + offset)(i) for i in range(4)) == [3, 4, 5, 6]
        assert sorted(Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(10))) == [
            i * i for i in range(10)
        ]
        with pytest.raises(KeyError, match="bad 2"):
            Parallel()(delayed(fail_on)(i, 2) for i in range(6))


def test_big_arguments_are_put_once(local_ray, monkeypatch):
    sent = []
    original = ray.put

    def counting(value, *args, **kwargs):
        sent.append(getattr(value, "nbytes", None))
        return original(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", counting)
    big = np.arange(1_000_000, dtype=np.float64)
    with parallel_config(backend="ray"):
        sums = Parallel(batch_size=1)(delayed(lambda a, i: float(a[i::4].sum()))(big, i) for i in range(8))
    assert sum(sums) == pytest.approx(2 * float(big.sum()))
    assert sent == [big.nbytes]


def test_uninitialised_ray_gives_a_clear_error(script):
    done = script(
        """
        from ferrojob import NoClusterError, Parallel, delayed
        try:
            Parallel(backend="ray")(delayed(abs)(1) for _ in range(2))
        except NoClusterError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "ray.init()" in done.stdout

