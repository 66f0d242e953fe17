"""Memory: caching, keywords, invalidation, eviction, corruption and concurrent processes."""

from __future__ import annotations

import datetime
import importlib
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest
from ferrojob import InvalidParameterError, Memory, Parallel, delayed

np = pytest.importorskip("numpy")

CALLS: list = []


def add(a, b=1, verbose=False):
    CALLS.append((a, b))
    return a + b


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()


def test_results_are_cached_by_argument_values(tmp_path):
    cached = Memory(tmp_path).cache(add)
    assert cached(1) == 2
    assert cached(1) == 2
    assert cached(a=1, b=1) == 2  # same call, spelled differently
    assert cached(2, b=3) == 5
    assert CALLS == [(1, 1), (2, 3)]


def test_decorator_with_options_and_ignore(tmp_path):
    memory = Memory(tmp_path)

    @memory.cache(ignore=["verbose"])
    def scale(x, verbose=False):
        CALLS.append(x)
        return 10 * x

    assert scale(2, verbose=True) == 20
    assert scale(2, verbose=False) == 20
    assert CALLS == [2]
    with pytest.raises(InvalidParameterError, match=r"names \['nope'\]"):
        memory.cache(add, ignore=["nope"])


def test_call_and_shelve_and_check_call_in_cache(tmp_path):
    cached = Memory(tmp_path).cache(add)
    assert not cached.check_call_in_cache(5)
    result = cached.call_and_shelve(5)
    assert cached.check_call_in_cache(5)
    assert result.get() == 6
    result.clear()
    assert not cached.check_call_in_cache(5)
    with pytest.raises(KeyError):
        result.get()


def test_clear_function_and_memory(tmp_path):
    memory = Memory(tmp_path)
    cached = memory.cache(add)
    cached(1)
    cached.clear()
    assert not cached.check_call_in_cache(1)
    cached(1)
    memory.clear(warn=False)
    assert not cached.check_call_in_cache(1)
    assert CALLS == [(1, 1), (1, 1)]


def test_no_location_means_no_cache():
    cached = Memory(None).cache(add)
    cached(1)
    cached(1)
    assert CALLS == [(1, 1), (1, 1)]
    assert not cached.check_call_in_cache(1)
    assert cached.call_and_shelve(3).get() == 4


def make_array(n):
    CALLS.append(n)
    return np.arange(n, dtype=np.float64)


def test_arrays_cached_with_mmap_mode_and_compression(tmp_path):
    cached = Memory(tmp_path / "mm", mmap_mode="r").cache(make_array)
    first = cached(1000)
    again = cached(1000)
    np.testing.assert_array_equal(first, again)
    assert not again.flags.writeable  # memory-mapped read-only
    # As joblib: the first call already returns what later calls return.
    assert type(first) is type(again) is np.memmap and not first.flags.writeable
    compressed = Memory(tmp_path / "z", compress=3).cache(make_array)
    compressed(1_000_000)
    np.testing.assert_array_equal(compressed(1_000_000), np.arange(1_000_000.0))
    size = sum(entry[2] for entry in compressed.memory.store.entries())
    assert size < 8_000_000 / 2
    assert CALLS == [1000, 1_000_000]
    with pytest.warns(UserWarning, match="compressed results cannot be memory-mapped"):
        Memory(tmp_path / "zm", compress=3, mmap_mode="r")  # as joblib, told at once


def test_array_arguments_are_hashed_by_content(tmp_path):
    cached = Memory(tmp_path).cache(lambda a: float(a.sum()))
    data = np.ones(10_000)
    assert cached(data) == cached(data.copy()) == 10_000.0
    assert cached.check_call_in_cache(np.ones(10_000))
    assert not cached.check_call_in_cache(np.zeros(10_000))


def test_source_change_invalidates(tmp_path, monkeypatch):
    module = tmp_path / "cached_module.py"
    module.write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cached_module

    memory = Memory(tmp_path / "cache")
    assert memory.cache(cached_module.f)(1) == 2
    assert memory.cache(cached_module.f).check_call_in_cache(1)
    module.write_text("def f(x):\n    return x + 100\n")
    importlib.invalidate_caches()
    os.utime(module, (time.time() + 5, time.time() + 5))
    cached_module = importlib.reload(cached_module)
    assert memory.cache(cached_module.f)(1) == 101


def used_long_ago(cached, n, seconds_ago):
    """Call ``cached(n)`` (a new entry) and date its last use ``seconds_ago`` back: an order of
    use that does not depend on the clock's resolution."""
    store = cached.memory.store
    before = {entry[:2] for entry in store.entries()}
    cached(n)
    for function, key in {entry[:2] for entry in store.entries()} - before:
        when = time.time() - seconds_ago
        os.utime(os.path.join(store.entry_dir(function, key), ".last-access"), (when, when))


def test_reduce_size_and_bytes_limit(tmp_path):
    memory = Memory(tmp_path)
    cached = memory.cache(make_array)
    for n, seconds_ago in ((10_000, 300), (20_000, 200), (30_000, 100)):
        used_long_ago(cached, n, seconds_ago)
    cached(10_000)  # now the most recently used
    memory.reduce_size(items_limit=2)
    assert cached.check_call_in_cache(10_000) and cached.check_call_in_cache(30_000)
    assert not cached.check_call_in_cache(20_000)
    memory.reduce_size(age_limit=datetime.timedelta(seconds=0))
    assert memory.store.entries() == []
    limited = Memory(tmp_path / "limited", bytes_limit="300K").cache(make_array)
    for n, seconds_ago in ((10_000, 300), (20_000, 200), (30_000, 100)):  # 80 KB, 160 KB, 240 KB
        used_long_ago(limited, n, seconds_ago)
    assert sum(entry[2] for entry in limited.memory.store.entries()) <= 300 * 1024
    assert limited.check_call_in_cache(30_000)


def test_damaged_entry_is_recomputed(tmp_path):
    cached = Memory(tmp_path).cache(make_array)
    cached(100_000)
    (entry,) = cached.memory.store.entries()
    output = os.path.join(cached.memory.store.entry_dir(entry[0], entry[1]), "output.fj")
    with open(output, "r+b") as handle:
        handle.truncate(1000)
    with pytest.warns(UserWarning, match="dropping a damaged cache entry"):
        np.testing.assert_array_equal(cached(100_000), np.arange(100_000.0))
    assert CALLS == [100_000, 100_000]


def test_cache_validation_callback(tmp_path):
    cached = Memory(tmp_path).cache(add, cache_validation_callback=lambda meta: meta["duration"] > 60)
    cached(1)
    cached(1)
    assert CALLS == [(1, 1), (1, 1)]


def test_memory_in_ferrojob_workers(tmp_path):
    cached = Memory(tmp_path).cache(add)
    first = Parallel(n_jobs=2)(delayed(cached)(i) for i in range(6))
    second = Parallel(n_jobs=2)(delayed(cached)(i) for i in range(6))
    assert first == second == [i + 1 for i in range(6)]
    assert all(cached.check_call_in_cache(i) for i in range(6))
    assert CALLS == []  # every computation happened in the workers


def test_memory_and_cached_functions_pickle(tmp_path):
    cached = Memory(tmp_path).cache(add)
    cached(7)
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.check_call_in_cache(7)


def test_concurrent_processes_compute_once(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from ferrojob import Memory

            def slow(x):
                open(os.path.join({str(marks)!r}, str(os.getpid())), "w").close()
                time.sleep(1.0)
                return x * 2

            memory = Memory({str(tmp_path / "cache")!r})
            print(memory.cache(slow)(21))
            """
        )
    )
    processes = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(8)
    ]
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert outputs == ["42"] * 8
    assert len(os.listdir(marks)) == 1
    leftovers = [name for _, _, files in os.walk(tmp_path / "cache") for name in files if name.endswith(".tmp")]
    assert leftovers == []


def test_verbose_reports_computations(tmp_path, capsys):
    cached = Memory(tmp_path, verbose=1).cache(add)
    cached(1)
    cached(1)
    assert capsys.readouterr().out.count("[Memory] calling") == 1


def test_a_cache_validation_callback_must_be_callable(tmp_path):
    with pytest.raises(ValueError, match="not callable"):
        Memory(tmp_path).cache(abs, cache_validation_callback=True)


def _keyword_only(a, b, *, kw1, kw2="kw2"):
    return a, b, kw1, kw2


def test_memory_details_joblib_users_rely_on(tmp_path):
    from ferrojob.memory import NotMemorizedResult

    memory = Memory(tmp_path)
    cached = memory.cache(_keyword_only)
    assert cached(1, 2, kw1=3) == (1, 2, 3, "kw2")
    with pytest.raises(ValueError, match="Keyword-only parameter 'kw1' was passed as positional"):
        cached(1, 2, 3, kw2=4)
    # call() runs even when cached, stores, and returns the metadata too.
    value, metadata = cached.call(1, 2, kw1=3)
    assert value == (1, 2, 3, "kw2") and set(metadata) >= {"duration", "time"}
    # check_call_in_cache honours cache_validation_callback.
    never = memory.cache(_keyword_only, cache_validation_callback=lambda metadata: False)
    assert cached.check_call_in_cache(1, 2, kw1=3) and not never.check_call_in_cache(1, 2, kw1=3)
    assert (tmp_path / ".gitignore").read_text().strip().endswith("*")
    shelved = Memory(None).cache(_keyword_only).call_and_shelve(1, 2, kw1=3)
    assert isinstance(shelved, NotMemorizedResult) and shelved.get() == (1, 2, 3, "kw2")
    shelved.clear()
    with pytest.raises(KeyError):
        shelved.get()


def test_a_memorized_result_of_a_local_function_pickles(tmp_path):
    import pickle

    def local(x):
        return x * 3

    shelved = Memory(tmp_path).cache(local).call_and_shelve(14)
    again = pickle.loads(pickle.dumps(shelved))
    assert again.get() == 42
    again.clear()
    with pytest.raises(KeyError):
        shelved.get()


def test_verbose_details_go_through_logging(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    cached = Memory(tmp_path, verbose=20).cache(_keyword_only)
    cached(1, 2, kw1=3)
    assert "Querying" in caplog.text and "Computing" in caplog.text
    caplog.clear()
    Memory(tmp_path, verbose=0).cache(_keyword_only)(1, 2, kw1=3)
    assert "Querying" not in caplog.text


def test_memory_creates_its_folder_at_once_as_joblib_does(tmp_path):
    location = tmp_path / "not" / "there" / "yet"
    Memory(location)
    assert location.is_dir()
    assert (location / "ferrojob").is_dir()


JOBLIB_CACHE_THEN_FERROJOB = """
import sys, warnings
import joblib
from mymodule import square

location = sys.argv[1]
joblib.Memory(location, verbose=0).cache(square)(3)

import ferrojob
cached = ferrojob.Memory(location, verbose=0).cache(square)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert cached(3) == 9 and cached(4) == 16 and cached(3) == 9
print(len(caught))
print(caught[0].message if caught else "")
"""


def test_a_joblib_cache_of_the_function_is_told_of_once(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("joblib")
    (tmp_path / "mymodule.py").write_text("def square(x):\n    return x * x\n")
    location = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", JOBLIB_CACHE_THEN_FERROJOB, str(location)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.split("\n", 1)
    assert count == "1"  # once, on the first miss
    assert f"joblib's cache of this function is in {location / 'joblib' / 'mymodule' / 'square'}" in message
    assert "does not read joblib's files" in message


def test_no_joblib_cache_no_notice(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory = Memory(tmp_path)
        assert memory.cache(abs)(-2) == 2
