"""Workers you can shape: initializer, batch caps and progress callbacks."""

from __future__ import annotations

import os

import pytest
from ferrojob import (
    InvalidParameterError,
    Parallel,
    ProgressUpdate,
    WorkerCrashedError,
    WorkerStartError,
    delayed,
    parallel_config,
)

_STATE: dict = {}


def remember(value):
    _STATE["value"] = value
    _STATE["initialized_in"] = os.getpid()


def recall(_):
    return _STATE.get("value"), _STATE.get("initialized_in"), os.getpid()


def test_the_initializer_runs_once_in_each_worker_before_its_tasks():
    results = Parallel(n_jobs=2, initializer=remember, initargs=("model",))(delayed(recall)(i) for i in range(20))
    assert all(value == "model" and where == pid for value, where, pid in results)
    assert os.getpid() not in {pid for _, _, pid in results}


def crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return recall(None)


def test_replacement_workers_run_the_initializer_too(tmp_path):
    marker = str(tmp_path / "crashed")
    with pytest.raises(WorkerCrashedError):
        Parallel(n_jobs=2, initializer=remember, initargs=(7,))(delayed(crash_once)(marker) for _ in range(2))
    value, where, pid = Parallel(n_jobs=2, initializer=remember, initargs=(7,))(
        delayed(crash_once)(marker) for _ in range(2)
    )[0]
    assert value == 7 and where == pid


def test_the_initializer_through_parallel_config_in_both_spellings():
    with parallel_config(initializer=remember, initargs=("a",)):
        assert Parallel(n_jobs=2)(delayed(recall)(0) for _ in range(2))[0][0] == "a"
    with parallel_config(backend="loky", initializer=remember, initargs=("b",)):  # joblib 1.5's
        assert Parallel(n_jobs=2)(delayed(recall)(0) for _ in range(2))[0][0] == "b"


def broken_setup():
    raise ValueError("no config file here")


def test_a_failing_initializer_fails_the_call_naming_it():
    with pytest.raises(WorkerStartError) as raised:
        Parallel(n_jobs=2, initializer=broken_setup)(delayed(abs)(-i) for i in range(4))
    message = str(raised.value)
    assert "the initializer broken_setup failed: ValueError: no config file here" in message
    assert "Traceback" in raised.value.stderr_tail


def test_invalid_initializers_are_refused():
    with pytest.raises(InvalidParameterError, match="is not callable"):
        Parallel(initializer=3)
    with pytest.raises(InvalidParameterError, match="tuple of arguments"):
        Parallel(initializer=remember, initargs=5)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_max_batch_size_caps_automatic_batches(backend):
    sizes = []
    Parallel(n_jobs=2, backend=backend, max_batch_size=3, progress=lambda u: sizes.append(u.n_completed))(
        delayed(abs)(-i) for i in range(300)
    )
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= 3 and sizes[-1] == 300
    with pytest.raises(InvalidParameterError, match="max_batch_size"):
        Parallel(max_batch_size=0)


def odd_fails(x):
    if x % 2:
        raise ValueError(x)
    return x


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
def test_progress_callbacks_see_every_batch_and_end_complete(backend):
    updates: list[ProgressUpdate] = []
    n_jobs = 1 if backend == "sequential" else 2
    Parallel(n_jobs=n_jobs, backend=backend, progress=updates.append, return_exceptions=True)(
        delayed(odd_fails)(i) for i in range(40)
    )
    completed = [u.n_completed for u in updates]
    assert completed == sorted(completed) and completed[-1] == 40
    assert updates[-1].n_total == 40 and updates[-1].n_failed == 20
    assert all(u.elapsed >= 0 for u in updates)
    if backend == "sequential":
        assert completed == list(range(1, 41))  # one call per task


def test_progress_total_is_unknown_until_a_generator_ends():
    updates: list[ProgressUpdate] = []
    Parallel(n_jobs=2, progress=updates.append)(delayed(abs)(i) for i in (x for x in range(50)))
    assert updates[-1].n_completed == updates[-1].n_total == 50


def worker_pid(_):
    return os.getpid()


def test_workers_are_replaced_after_exactly_max_tasks_per_worker():
    pids = Parallel(n_jobs=2, max_tasks_per_worker=5)(delayed(worker_pid)(i) for i in range(40))
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert set(counts.values()) == {5}  # 8 workers, 5 tasks each
    assert len(counts) == 8


def leak(size):
    _STATE.setdefault("hoard", []).append(bytearray(size))
    return os.getpid()


def test_a_worker_past_its_memory_cap_is_replaced_before_its_next_task():
    pids = Parallel(n_jobs=2, max_worker_memory="60MB")(delayed(leak)(20 << 20) for _ in range(40))
    counts = {pid: pids.count(pid) for pid in set(pids)}
    # A worker starts near 20-40 MB: past 60 MB after a few 20 MB leaks, it stops its batch
    # there and is replaced; the rest of the batch runs on a fresh one.
    assert len(pids) == 40 and len(counts) >= 10 and max(counts.values()) <= 3


def test_worker_limits_are_checked():
    with pytest.raises(InvalidParameterError, match="max_tasks_per_worker"):
        Parallel(max_tasks_per_worker=0)
    with pytest.raises(InvalidParameterError, match="max_worker_memory"):
        Parallel(max_worker_memory="lots")


class Counted:
    """A large object that counts how often it is pickled."""

    pickled = 0

    def __init__(self):
        self.rows = [[i, str(i)] for i in range(20_000)]  # ~300 KB pickled

    def __reduce__(self):
        Counted.pickled += 1
        return (_rebuild, (self.rows,))


def _rebuild(rows):
    counted = Counted.__new__(Counted)
    counted.rows = rows
    return counted


def size_and_identity(counted, _):
    return len(counted.rows), id(counted), os.getpid()


def test_a_large_object_passed_to_many_tasks_is_pickled_once_per_call_and_loaded_once_per_worker():
    big = Counted()
    Counted.pickled = 0
    results = Parallel(n_jobs=2, batch_size=1)(delayed(size_and_identity)(big, i) for i in range(60))
    assert all(size == 20_000 for size, _, _ in results)
    assert Counted.pickled <= 2  # in the first batch, then once to share it; never per batch
    per_worker = {}
    for _, identity, pid in results:
        per_worker.setdefault(pid, set()).add(identity)
    # Each worker unpickled it once, for all its later tasks (the first batch had its own copy).
    assert all(len(identities) <= 2 for identities in per_worker.values())


def test_a_large_container_is_pickled_once_per_call():
    table = {i: [i] * 3 for i in range(50_000)}
    calls = Parallel(n_jobs=2, batch_size=1)(delayed(len)(table) for _ in range(30))
    assert calls == [50_000] * 30


def hangs(seconds):
    import time

    time.sleep(seconds)  # the initializer hangs here


def test_a_hanging_initializer_is_reported_as_such_not_as_a_task_that_ran_too_long():
    from ferrojob import TaskTimeoutError
    from ferrojob._core import STARTING_LIMIT

    with pytest.raises(TaskTimeoutError) as raised:
        Parallel(n_jobs=2, timeout=3, initializer=hangs, initargs=(600,))(delayed(abs)(-i) for i in range(2))
    message = str(raised.value)
    assert "never started" in message and "was still starting (running its initializer" in message
    assert f"after {STARTING_LIMIT:g} s" in message
    assert "ran longer than" not in message
    assert "time.sleep(seconds)  # the initializer hangs here" in raised.value.stack
