"""joblib's documented examples, run unchanged through ``import ferrojob as joblib``.

The examples come from joblib's user guide (parallel.rst, memory.rst, persistence.rst) and
docstrings; results are checked against what the documentation shows.
"""

from __future__ import annotations

import math
import os
from math import modf, sqrt

import ferrojob as joblib
import pytest
from ferrojob import Memory, Parallel, delayed, parallel_config

np = pytest.importorskip("numpy")


def test_parallel_sqrt():
    assert Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10)) == [float(i) for i in range(10)]


def test_prefer_threads():
    assert Parallel(n_jobs=2, prefer="threads")(delayed(sqrt)(i**2) for i in range(10)) == [float(i) for i in range(10)]


def test_parallel_config_block():
    with parallel_config(backend="threading", n_jobs=2):
        assert Parallel()(delayed(sqrt)(i**2) for i in range(10)) == [float(i) for i in range(10)]


def test_modf_unzip():
    r = Parallel(n_jobs=1)(delayed(modf)(i / 2.0) for i in range(10))
    res, i = zip(*r, strict=True)
    assert res == (0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5)
    assert i == (0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0)


def test_reusing_a_pool_of_workers():
    with Parallel(n_jobs=2) as parallel:
        accumulator = 0.0
        n_iter = 0
        while accumulator < 1000:
            results = parallel(delayed(sqrt)(accumulator + i**2) for i in range(5))
            accumulator += sum(results)  # synchronization barrier
            n_iter += 1
    expected, rounds = 0.0, 0
    while expected < 1000:
        expected += sum(sqrt(expected + i**2) for i in range(5))
        rounds += 1
    assert (accumulator, n_iter) == (expected, rounds) == (pytest.approx(1136.5969, abs=1e-3), 14)


def test_generator_output():
    generator = Parallel(n_jobs=2, return_as="generator")(delayed(sqrt)(i**2) for i in range(10))
    assert next(generator) == 0.0
    assert list(generator) == [float(i) for i in range(1, 10)]


def test_exception_propagates():
    with pytest.raises(ValueError, match="math domain error"):
        Parallel(n_jobs=2)(delayed(math.sqrt)(-i) for i in range(1, 4))


def test_verbose_runs(capsys):
    Parallel(n_jobs=2, verbose=5)(delayed(sqrt)(i**2) for i in range(10))
    assert "[Parallel(n_jobs=2)]" in capsys.readouterr().err


def test_cpu_count_and_effective_n_jobs():
    assert joblib.cpu_count() >= 1
    assert joblib.effective_n_jobs(-1) == joblib.cpu_count()


def test_memory_example(tmp_path, capsys):
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def f(x):
        print(f"Running f({x})")
        return x

    assert f(1) == 1
    assert f(1) == 1
    assert f(2) == 2
    assert capsys.readouterr().out == "Running f(1)\nRunning f(2)\n"


def test_memory_with_numpy(tmp_path, capsys):
    memory = Memory(tmp_path, verbose=0)
    a = np.vander(np.arange(3)).astype(float)
    square = memory.cache(np.square)
    b = square(a)
    np.testing.assert_array_equal(b, np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [16.0, 4.0, 1.0]]))
    np.testing.assert_array_equal(square(a), b)
    assert square.check_call_in_cache(a)


def test_memory_mmap_and_shelving(tmp_path):
    memory = Memory(tmp_path, mmap_mode="r", verbose=0)
    square = memory.cache(np.square)
    a = np.vander(np.arange(3)).astype(float)
    square(a)
    cached = square(a)
    assert not cached.flags.writeable
    result = square.call_and_shelve(a)
    np.testing.assert_array_equal(result.get(), np.square(a))
    result.clear()


def test_memory_expires_after(tmp_path):
    memory = Memory(tmp_path, verbose=0)
    calls = []

    @memory.cache(cache_validation_callback=joblib.expires_after(seconds=0))
    def f(x):
        calls.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1, 1]


def test_dump_and_load(tmp_path):
    to_persist = [("a", [1, 2, 3]), ("b", np.arange(10))]
    filename = os.path.join(tmp_path, "test.joblib")
    assert joblib.dump(to_persist, filename) == [filename]
    loaded = joblib.load(filename)
    assert loaded[0] == ("a", [1, 2, 3])
    np.testing.assert_array_equal(loaded[1][1], np.arange(10))


def test_dump_compressed_and_mmap(tmp_path):
    to_persist = [("a", [1, 2, 3]), ("b", np.arange(10))]
    filename = os.path.join(tmp_path, "test.joblib")
    joblib.dump(to_persist, filename, compress=3)
    assert joblib.load(filename)[0] == ("a", [1, 2, 3])
    large = np.arange(1_000_000.0)
    joblib.dump(large, filename)
    mapped = joblib.load(filename, mmap_mode="r+")
    assert mapped.sum() == large.sum()


def test_hash_example():
    assert joblib.hash([1, 2, 3]) == joblib.hash([1, 2, 3])
    assert joblib.hash(np.arange(10)) != joblib.hash(np.arange(11))


def test_wrap_non_picklable_objects():
    @joblib.wrap_non_picklable_objects
    def local(x):
        return x + 1

    assert Parallel(n_jobs=2)(delayed(local)(i) for i in range(3)) == [1, 2, 3]


def test_register_parallel_backend_and_parallel_backend_alias():
    from ferrojob.backends.threads import ThreadingBackend

    joblib.register_parallel_backend("my_threads", ThreadingBackend)
    with joblib.parallel_backend("my_threads", n_jobs=2):
        assert Parallel()(delayed(sqrt)(4) for _ in range(2)) == [2.0, 2.0]
