"""The process pool at its boundaries: forks on either side, tasks that misuse the worker's
descriptors or raise what ``except Exception`` misses, and odd parameter values."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle

import pytest
from conftest import PORTABLE, is_shared_memory
from ferrojob import InvalidParameterError, Parallel, UnpicklableError, WorkerCrashedError, delayed

np = pytest.importorskip("numpy")

BIG = 50_000  # elements: results travel through shared memory, not the socket


def filled(value):
    return np.full(BIG, value, dtype=np.int64)


def firsts(arrays):
    return [int(array[0]) for array in arrays]


def drop_inherited_results(results):
    """What a forked child may do with results it inherited: drop them."""
    results.clear()
    gc.collect()


def test_a_forked_child_dropping_inherited_results_leaves_the_parents_intact():
    results = Parallel(n_jobs=2)(delayed(filled)(i) for i in range(4))
    assert firsts(results) == [0, 1, 2, 3]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        drop_inherited_results(results)
        os._exit(0)
    os.waitpid(pid, 0)
    later = Parallel(n_jobs=2)(delayed(filled)(100 + i) for i in range(4))
    assert firsts(later) == [100, 101, 102, 103]
    assert firsts(results) == [0, 1, 2, 3]  # not rewritten by the workers


def test_a_multiprocessing_fork_child_cannot_corrupt_the_parent():
    results = Parallel(n_jobs=2)(delayed(filled)(i) for i in range(4))
    context = multiprocessing.get_context("fork")
    child = context.Process(target=drop_inherited_results, args=(results,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    Parallel(n_jobs=2)(delayed(filled)(100 + i) for i in range(4))
    assert firsts(results) == [0, 1, 2, 3]


def test_a_forked_child_uses_a_pool_of_its_own():
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(reader)
        try:
            out = Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))
            os.write(writer, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        assert pickle.loads(pipe.read()) == [0, 1, 2, 3]
    os.waitpid(pid, 0)
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def forks_and_returns(x):
    pid = os.fork()
    if pid == 0:
        return x + 1000  # the child returns into the worker's loop instead of exiting
    os.waitpid(pid, 0)
    return x


def test_a_task_that_forks_completes_within_the_timeout_with_the_parents_results():
    assert Parallel(n_jobs=2, timeout=30)(delayed(forks_and_returns)(i) for i in range(6)) == list(range(6))


def writes_on_the_worker_socket(x):
    os.write(3, b"\x00" * 64)  # not a frame: the parent must not trust this worker any more
    return x


def closes_the_worker_socket(x):
    os.close(3)
    return x


def test_a_task_that_garbles_the_worker_socket_fails_clearly():
    with pytest.raises(WorkerCrashedError, match="broke ferrojob's worker protocol") as raised:
        Parallel(n_jobs=2, timeout=30)(delayed(writes_on_the_worker_socket)(i) for i in range(2))
    assert "file descriptor 3" in str(raised.value)
    assert Parallel(n_jobs=1)(delayed(abs)(-1) for _ in range(2)) == [1, 1]


def test_a_task_that_closes_the_worker_socket_is_named_without_blaming_os_exit():
    with pytest.raises(WorkerCrashedError, match="lost its connection to the parent") as raised:
        Parallel(n_jobs=2, timeout=30)(delayed(closes_the_worker_socket)(i) for i in range(2))
    assert "closes_the_worker_socket" in str(raised.value)
    assert "os._exit" not in str(raised.value)


def interrupts(x):
    if x == 2:
        raise KeyboardInterrupt("from the task")
    return x


def test_keyboard_interrupt_in_a_task_is_reraised_with_its_task():
    with pytest.raises(KeyboardInterrupt, match="from the task") as raised:
        Parallel(n_jobs=2)(delayed(interrupts)(i) for i in range(4))
    assert "task 2: interrupts(2)" in str(raised.value.__cause__)
    assert Parallel(n_jobs=2)(delayed(abs)(-1) for _ in range(2)) == [1, 1]


class BreaksWhenLoaded:
    def __reduce__(self):
        return (int, ("not a number",))


def test_arguments_that_fail_to_load_in_the_worker_name_their_tasks():
    with pytest.raises(UnpicklableError, match=r"the arguments of task [01]: abs\(<.*\) could not be loaded") as raised:
        Parallel(n_jobs=2, batch_size=1)(delayed(abs)(BreaksWhenLoaded()) for _ in range(2))
    assert "ValueError" in str(raised.value)
    assert "invalid literal" in str(raised.value.__cause__)


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
def test_an_infinite_timeout_means_no_limit(backend):
    assert Parallel(n_jobs=2, backend=backend, timeout=float("inf"))(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, 0])
def test_a_timeout_that_is_no_duration_is_refused(timeout):
    with pytest.raises(InvalidParameterError, match="timeout"):
        Parallel(n_jobs=2, timeout=timeout)


def tries_to_shrink_shared_memory(array):
    """Truncate every shared-memory file this worker holds; return how many refused."""
    refused = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if is_shared_memory(target):
            try:
                os.ftruncate(int(name), 0)
            except PermissionError:
                refused += 1
    return refused, np.full(BIG, 7)


@pytest.mark.skipif(PORTABLE, reason="the portable path has no seals (README: platforms)")
def test_tasks_cannot_shrink_shared_memory_under_the_parent():
    argument = np.arange(BIG)
    results = Parallel(n_jobs=2)(delayed(tries_to_shrink_shared_memory)(argument) for _ in range(4))
    results += Parallel(n_jobs=2)(delayed(tries_to_shrink_shared_memory)(argument) for _ in range(4))
    assert all(refused >= 1 for refused, _ in results)  # the status page at least
    assert all(int(array.sum()) == 7 * BIG for _, array in results)  # no SIGBUS reading them


def append_through_proxy(shared, x):
    shared.append(x)
    return len(shared) > 0


def test_multiprocessing_manager_proxies_work_in_tasks():
    import multiprocessing

    with multiprocessing.Manager() as manager:
        shared = manager.list()
        assert all(Parallel(n_jobs=2)(delayed(append_through_proxy)(shared, i) for i in range(6)))
        assert sorted(shared) == list(range(6))


LARGE = 500_000  # int64 elements: 4 MB per array, 8 arrays fill more than one 16 MiB arena chunk


def large_sums(offset):
    """Large arguments placed in shared memory, several chunks' worth: the child's arena must
    prepare chunks of its own (its parent's helper thread did not survive the fork)."""
    arrays = [np.full(LARGE, offset + i, dtype=np.int64) for i in range(8)]
    return Parallel(n_jobs=2)(delayed(np.sum)(array) for array in arrays)


def expected_sums(offset):
    return [LARGE * (offset + i) for i in range(8)]


def wait_for_child(pid, seconds=60):
    """The child's exit status, or a failure (and the child killed) if it hangs."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child {pid} hung")


def test_a_forked_child_runs_large_calls_after_its_parent_did():
    assert large_sums(0) == expected_sums(0)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(reader)
        try:
            out = [large_sums(10), large_sums(20)]
            os.write(writer, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(writer)
    status = wait_for_child(pid)
    with os.fdopen(reader, "rb") as pipe:
        assert pickle.loads(pipe.read()) == [expected_sums(10), expected_sums(20)]
    assert os.waitstatus_to_exitcode(status) == 0
    assert large_sums(30) == expected_sums(30)


def large_calls_into(queue):
    queue.put([large_sums(10), large_sums(20)])


def test_a_multiprocessing_fork_child_runs_large_calls():
    assert large_sums(0) == expected_sums(0)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=large_calls_into, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=120) == [expected_sums(10), expected_sums(20)]
    finally:
        child.join(60)
        if child.is_alive():  # pragma: no cover - a hang
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert large_sums(30) == expected_sums(30)


CHILD_PROGRAM = """
import os, sys
from ferrojob import Parallel, delayed
pids = set(Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(8)))
print(os.environ.get("FERROJOB_WORKER"), os.getpid() in pids)
"""


def run_a_program():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CHILD_PROGRAM], capture_output=True, text=True, timeout=120)
    return done.stdout.strip(), done.stderr[-2000:]


def test_a_program_a_task_starts_is_not_taken_for_a_worker():
    (out, err), *_ = Parallel(n_jobs=2)(delayed(run_a_program)() for _ in range(2))
    # The program sees no worker mark, and its own Parallel runs in worker processes of its own.
    assert out == "None False", err


def test_plain_batches_are_pickled_as_cloudpickle_would_send_them():
    import sys
    import types

    import cloudpickle
    from ferrojob._pickling import dumps_plain, pickles_by_reference

    assert pickles_by_reference(abs) and pickles_by_reference(filled)
    assert not pickles_by_reference(lambda x: x) and not pickles_by_reference([].append)
    # A module the workers cannot import: its functions only work sent by value.
    module = types.ModuleType("ferrojob_made_here")
    exec("def plus_one(x):\n    return x + 1", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        plus_one = module.plus_one
        assert pickles_by_reference(plus_one)  # cached: registering by value comes after
        cloudpickle.register_pickle_by_value(module)
        try:
            assert dumps_plain((plus_one, 1)) is None
            assert Parallel(n_jobs=2)(delayed(plus_one)(i) for i in range(50)) == list(range(1, 51))
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        module.plus_one = lambda x: x  # rebound under its name: the C pickler refuses it
        assert dumps_plain((plus_one, 1)) is None
    finally:
        del sys.modules[module.__name__]
