"""Large buffers travel through shared memory: exact round trips, read-only arguments, writable
results, placement once per call, and nothing left behind."""

from __future__ import annotations

import gc
import os
import pickle
import signal

import pytest
from conftest import is_shared_memory, open_fds, worker_children
from ferrojob import InvalidParameterError, Parallel, WorkerCrashedError, delayed
from ferrojob._core import ENGINE_PATH, Arena, watches_writes
from ferrojob._settings import parse_size
from ferrojob._sharedmem import ArgumentStore

np = pytest.importorskip("numpy")

BIG = 1 << 20  # above the default max_nbytes (64 KiB)


def identity(x):
    return x


def describe(a):
    return a.shape, a.dtype.str, a.strides, a.flags.writeable, a.flags.f_contiguous


def write_first(a, value=1.0):
    flat = a.reshape(-1)
    flat[0] = value
    return float(flat[0])


def fresh(n, value):
    return np.full(n, value)


def exit_now(_):
    os._exit(7)


def segv_now(_):
    os.kill(os.getpid(), signal.SIGSEGV)


ARRAYS = {
    "c-order 2-d": np.arange(BIG // 8 * 3, dtype=np.float64).reshape(-1, 3),
    "fortran order": np.asfortranarray(np.arange(BIG // 8 * 4, dtype=np.float32).reshape(-1, 4)),
    "non-contiguous": np.arange(BIG // 4, dtype=np.int64)[::3],
    "0-d": np.array(2.5),
    "empty": np.zeros((0, 5)),
    "int16": np.arange(BIG, dtype=np.int16),
    "complex": np.arange(BIG // 16, dtype=np.complex128) * 1j,
    "structured": np.zeros(BIG // 12, dtype=[("a", "i4"), ("b", "f8")]),
    "small": np.arange(10),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_arrays_round_trip_exactly(name):
    array = ARRAYS[name]
    # What pickle itself gives back (a non-contiguous view comes back as a contiguous copy).
    reference = pickle.loads(pickle.dumps(array, protocol=5))
    back = Parallel(n_jobs=2)(delayed(identity)(array) for _ in range(3))
    for result in back:
        assert result.dtype == array.dtype
        assert result.shape == array.shape
        assert result.strides == reference.strides
        assert result.flags.f_contiguous == reference.flags.f_contiguous
        np.testing.assert_array_equal(result, array)


def test_object_arrays_fall_back_to_pickling():
    array = np.array([{"a": 1}, [2], "three", None] * 1000, dtype=object)
    (back,) = Parallel(n_jobs=2)([delayed(identity)(array)])
    assert back.dtype == object
    assert list(back) == list(array)


@pytest.mark.parametrize(
    "value",
    [b"x" * BIG, bytearray(b"y" * BIG), pickle.PickleBuffer(bytearray(b"z" * BIG))],
    ids=["bytes", "bytearray", "PickleBuffer"],
)
def test_buffer_producers_round_trip(value):
    (back,) = Parallel(n_jobs=2)([delayed(identity)(value)])
    expected = bytes(value.raw()) if isinstance(value, pickle.PickleBuffer) else value
    assert bytes(back) == bytes(expected)
    if not isinstance(value, pickle.PickleBuffer):
        assert type(back) is type(value)


def test_memoryview_argument():
    view = memoryview(bytearray(b"q" * BIG))
    (back,) = Parallel(n_jobs=2)([delayed(bytes)(view)])
    assert back == b"q" * BIG


def test_arguments_are_read_only_in_workers():
    array = np.ones(BIG // 8)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        Parallel(n_jobs=2)([delayed(write_first)(array)])
    assert array[0] == 1.0


def test_mmap_mode_c_gives_each_task_a_private_writable_copy():
    array = np.zeros(BIG // 8)
    results = Parallel(n_jobs=2, mmap_mode="c")(delayed(write_first)(array, i) for i in range(4))
    assert results == [0.0, 1.0, 2.0, 3.0]
    assert array[0] == 0.0


def test_mmap_mode_r_plus_is_writable_and_leaves_the_callers_array_alone():
    array = np.zeros(BIG // 8)
    assert Parallel(n_jobs=2, mmap_mode="r+")([delayed(write_first)(array, 5.0)]) == [5.0]
    assert array[0] == 0.0


def test_max_nbytes_none_sends_everything_inline():
    array = np.zeros(BIG // 8)
    # Inline arguments are private unpickled copies: writable, like joblib with max_nbytes=None.
    assert Parallel(n_jobs=2, max_nbytes=None)([delayed(write_first)(array, 3.0)]) == [3.0]


def test_small_arrays_stay_inline_below_max_nbytes():
    array = np.zeros(1000)
    assert Parallel(n_jobs=2, max_nbytes="1M")([delayed(write_first)(array, 2.0)]) == [2.0]


def test_results_are_writable_and_outlive_the_pool():
    with Parallel(n_jobs=2) as parallel:
        results = parallel(delayed(fresh)(BIG // 8, float(i)) for i in range(4))
    from ferrojob.backends import processes

    processes._SHARED.shutdown()
    for i, result in enumerate(results):
        assert result.flags.writeable
        assert result[0] == float(i) and result[-1] == float(i)
        result[:] = -1
        assert result.sum() == -result.size


def test_max_nbytes_parsing():
    assert parse_size("1M", "max_nbytes") == 1 << 20
    assert parse_size("100k", "max_nbytes") == 100 << 10
    assert parse_size(4096, "max_nbytes") == 4096
    assert parse_size(None, "max_nbytes") is None
    for bad in ("lots", -1, True, 1.5):
        with pytest.raises(InvalidParameterError, match="is not a size"):
            parse_size(bad, "max_nbytes")
    with pytest.raises(ValueError, match="is not a mapping mode"):
        Parallel(n_jobs=2, mmap_mode="rw")


# -- placement ----------------------------------------------------------------------------------


def placements(store, buffers):
    return [store.place(buffer) for buffer in buffers]


def out_of_band(obj):
    buffers = []
    pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return buffers


def test_the_same_array_is_placed_once():
    store = ArgumentStore(Arena())
    array = np.ones(BIG)
    first = placements(store, out_of_band(array))
    again = [placements(store, out_of_band(array)) for _ in range(39)]
    assert all(places == first for places in again)
    assert store.arena.n_open_chunks == 1


def test_slices_of_one_array_are_placed_separately_and_fortran_arrays_are_recognised():
    store = ArgumentStore(Arena())
    base = np.arange(BIG, dtype=np.float64)
    a, b = (placements(store, out_of_band(base[i * 1000 : (i + 1) * 1000])) for i in range(2))
    assert a != b
    fortran = np.asfortranarray(np.ones((512, 512)))
    assert placements(store, out_of_band(fortran)) == placements(store, out_of_band(fortran))


def test_a_dead_arrays_memory_is_not_mistaken_for_a_new_one():
    store = ArgumentStore(Arena())
    first = np.ones(BIG // 8)
    place = placements(store, out_of_band(first))
    del first
    second = np.full(BIG // 8, 2.0)  # may reuse the freed address
    assert placements(store, out_of_band(second)) != place


def test_memory_whose_owner_cannot_be_watched_is_placed_once_per_call():
    # bytes cannot be weakly referenced: the store keeps them alive for the call instead.
    store = ArgumentStore(Arena())
    raw = bytes(BIG)
    over_bytes = np.frombuffer(raw, dtype=np.uint8)
    pickled = pickle.PickleBuffer(bytes(BIG))  # a shared object's pickle rides like this
    for value in (over_bytes, pickled):
        buffers = out_of_band(value) if isinstance(value, np.ndarray) else [value]
        first = placements(store, buffers)
        assert all(placements(store, buffers) == first for _ in range(20))
    assert store.arena.n_open_chunks == 1
    store.new_call()  # the call ends: what was pinned is let go, placed afresh in the next call
    assert placements(store, out_of_band(over_bytes)) != first


def first_byte(data, i):
    return int(data[i % len(data)])


def column_total(table, i):
    return len(table[i % len(table)])


def test_a_shared_object_and_a_frombuffer_array_in_20000_tasks():
    table = {i: [i, str(i), float(i)] for i in range(100_000)}  # ~2 MB pickled: shared once
    assert Parallel(n_jobs=2)(delayed(column_total)(table, i) for i in range(20_000)) == [3] * 20_000
    data = np.frombuffer(bytes(range(256)) * (BIG // 256), dtype=np.uint8)
    assert Parallel(n_jobs=2)(delayed(first_byte)(data, i) for i in range(20_000)) == [i % 256 for i in range(20_000)]


class CountsPickling:
    """A large object that counts how often it is pickled (here) and unpickled (in a worker)."""

    pickled = 0
    loaded = 0

    def __init__(self):
        self.payload = bytes(2 << 20)

    def __getstate__(self):
        CountsPickling.pickled += 1
        return self.payload

    def __setstate__(self, payload):
        CountsPickling.loaded += 1
        self.payload = payload


def loads_of_shared(shared, i):
    return os.getpid(), CountsPickling.loaded


def test_a_shared_object_is_pickled_once_per_call_and_loaded_once_per_worker():
    shared = CountsPickling()
    results = Parallel(n_jobs=2, batch_size=10)(delayed(loads_of_shared)(shared, i) for i in range(2000))
    assert CountsPickling.pickled == 1  # 200 batches: pickled once, then a memo reference each
    by_worker: dict[int, set[int]] = {}
    for pid, loads in results:
        by_worker.setdefault(pid, set()).add(loads)
    assert all(loads == {1} for loads in by_worker.values())


def total_of_all(*arrays):
    return float(sum(a.sum() for a in arrays))


def test_a_batch_that_refers_to_more_chunks_than_one_message_carries(monkeypatch):
    from ferrojob.backends import processes

    # Chunks of 4 KiB: each 8 KiB argument gets a chunk of its own, 300 for one task (one
    # message carries at most 253 descriptors).
    monkeypatch.setattr(processes, "ArgumentStore", lambda _arena: ArgumentStore(Arena(4096)))
    arrays = [np.full(1024, float(i)) for i in range(300)]
    expected = 1024.0 * sum(range(300))
    results = Parallel(n_jobs=2, max_nbytes="1K")(delayed(total_of_all)(*arrays) for _ in range(4))
    assert results == [expected] * 4


def test_big_array_shared_by_many_tasks():
    big = np.arange(8 * BIG, dtype=np.float64)
    parts = Parallel(n_jobs=2)(delayed(lambda a, i: float(a[i::40].sum()))(big, i) for i in range(40))
    assert sum(parts) == float(big.sum())


# -- lifetimes ----------------------------------------------------------------------------------


def shared_memory_maps():
    with open("/proc/self/maps") as maps:
        return sum(is_shared_memory(line) for line in maps)


def test_nothing_leaks_across_many_calls_and_crashes():
    array = np.ones(BIG // 8)

    def one_round(i):
        results = Parallel(n_jobs=2)(delayed(fresh)(BIG // 8, float(i)) for _ in range(3))
        assert Parallel(n_jobs=2)(delayed(float)(array.sum()) for _ in range(2))
        assert all(r[0] == float(i) for r in results)
        del results
        if i % 10 == 0:
            with pytest.raises(WorkerCrashedError):
                Parallel(n_jobs=2)(delayed(exit_now if i % 20 else segv_now)(array) for _ in range(2))

    one_round(0)
    gc.collect()  # objects of earlier tests must not close their descriptors during the count
    fds, maps, kids = open_fds(), shared_memory_maps(), len(worker_children())
    for i in range(1, 501):  # 1,000 calls, and 50 with a crashing worker
        one_round(i)
    from ferrojob._core import Arena

    Arena()  # the helper thread frees mappings asynchronously: let it drain
    import time

    deadline = time.monotonic() + 10
    while shared_memory_maps() > maps and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    assert open_fds() <= fds
    assert shared_memory_maps() <= maps
    assert len(worker_children()) == kids
    assert not [name for name in os.listdir("/dev/shm") if "ferrojob" in name]


def shared_argument_bytes():
    """Bytes of argument shared memory this process holds open."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if is_shared_memory(os.readlink(f"/proc/self/fd/{fd}"), "arguments"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue  # closed meanwhile (the helper thread frees chunks)
    return total


def eighth_total(a, i):
    return float(a[i::8].sum())


MB50 = 50 << 20


def test_a_freed_argument_leaves_shared_memory_inside_a_block_and_an_executor():
    from ferrojob import Executor

    def calls_in_a_block():
        with Parallel(n_jobs=2) as parallel:
            for k in range(100):
                data = np.full(MB50 // 8, float(k))
                assert sum(parallel(delayed(eighth_total)(data, i) for i in range(8))) == k * (MB50 // 8)
                del data
                yield shared_argument_bytes()

    def submissions_to_an_executor():
        with Executor(max_workers=2) as executor:
            for k in range(100):
                data = np.full(MB50 // 8, float(k))
                assert executor.submit(eighth_total, data, 0).result() == k * (MB50 // 64)
                del data
                yield shared_argument_bytes()

    for held in (calls_in_a_block(), submissions_to_an_executor()):
        # 100 arrays of 50 MB went through: at most a few are still being freed (asynchronously).
        assert max(held) <= 3 * MB50


def test_threading_backend_passes_the_objects_themselves():
    array = np.ones(BIG)
    (back,) = Parallel(n_jobs=2, backend="threading")([delayed(identity)(array)])
    assert back is array


def test_numpy_allocator_opt_in_gives_zero_copy_results(script):
    done = script(
        """
        import os
        os.environ["FERROJOB_NUMPY_ALLOCATOR"] = "1"
        import numpy as np
        from ferrojob import Parallel, delayed

        def make(i):
            import numpy
            return numpy.full(1 << 20, float(i)), numpy._core.multiarray.get_handler_name()

        out = Parallel(n_jobs=2)(delayed(make)(i) for i in range(6))
        assert [a[0] for a, _ in out] == [float(i) for i in range(6)]
        assert all(a.flags.writeable for a, _ in out)
        print(sorted({name for _, name in out})[-1])
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ferrojob_shared_memory"


# -- recycling: shared segments are written again only once nothing reads them -----------------

KEPT: list = []  # in each worker: arguments a task chose to keep


def keep(array):
    KEPT.append(array)
    return os.getpid(), float(array.sum())


def kept_sums(_=None):
    return os.getpid(), [float(a.sum()) for a in KEPT]


def test_arguments_a_task_keeps_are_never_overwritten():
    expected: dict[int, list[float]] = {}
    for round_number in range(6):
        arrays = [np.full(BIG // 8, float(round_number * 10 + i)) for i in range(4)]
        for pid, total in Parallel(n_jobs=2, batch_size=1)(delayed(keep)(a) for a in arrays):
            expected.setdefault(pid, []).append(total)
    # Which worker runs what is the scheduler's choice (a worker still starting, replaced by an
    # earlier test, may run none of the keeps): ask until each worker that kept arrays answered.
    seen: dict[int, list[float]] = {}
    for _ in range(50):
        for pid, sums in Parallel(n_jobs=2, batch_size=1)(delayed(kept_sums)(i) for i in range(20)):
            seen[pid] = sums
        if seen.keys() >= expected.keys():
            break
    assert seen.keys() >= expected.keys()
    for pid, sums in seen.items():
        assert sums == expected.get(pid, [])


def test_results_kept_by_the_caller_are_never_overwritten():
    kept = [Parallel(n_jobs=2)(delayed(fresh)(BIG // 8, float(10 * r + i)) for i in range(3)) for r in range(5)]
    for r, results in enumerate(kept):
        for i, result in enumerate(results):
            assert result.min() == result.max() == float(10 * r + i)


def test_many_distinct_arguments_while_replies_release_chunks():
    # Replies release argument chunks from the pool's reader threads while the caller places
    # the next batches' buffers: a chunk must never retire between placing and holding.
    arrays = [np.full(25_000, float(i)) for i in range(2000)]
    for _ in range(3):
        sums = Parallel(n_jobs=2)(delayed(np.sum)(a) for a in arrays)
        assert sums == [25_000.0 * i for i in range(2000)]


def slice_total(a, i, n):
    step = len(a) // n
    return float(a[i * step : (i + 1) * step].sum())


@pytest.mark.parametrize("size", [4_000_000, 100_000])  # 32 MB (kept across calls), 800 KB
def test_arrays_reused_across_calls_of_a_block_are_never_stale(size):
    data = np.ones(size)
    with Parallel(n_jobs=2) as parallel:
        first = sum(parallel(delayed(slice_total)(data, i, 8) for i in range(8)))
        again = sum(parallel(delayed(slice_total)(data, i, 8) for i in range(8)))
        data += 1  # modified in place between two calls of the block
        after = sum(parallel(delayed(slice_total)(data, i, 8) for i in range(8)))
    assert first == again == float(size)
    assert after == 2.0 * size


def bytes_copied(parallel) -> int:
    """Bytes the last call of ``parallel`` copied into shared memory."""
    return sum(batch.bytes_copied_to for batch in parallel.last_report.batches)


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@pytest.mark.skipif(ENGINE_PATH != "linux", reason="the write watch is part of the Linux path")
def test_large_arguments_are_proven_unchanged_by_watching_their_pages_on_linux_6_7():
    # Where the kernel has asynchronous userfaultfd write-protection and PAGEMAP_SCAN, a later
    # call does not read a reused array again (the fallback, a fingerprint, does).
    assert watches_writes() == (kernel_version() >= (6, 7))


def write_with_read_syscall(data, tmp_path):
    """Change ``data`` in place the way a file read does: the kernel writes into its pages."""
    path = tmp_path / "part.bin"
    path.write_bytes(np.full(1000, -1.0).tobytes())
    with open(path, "rb", buffering=0) as raw:
        raw.readinto(memoryview(data).cast("B")[8000 : 8000 + 8000])


CHANGES = {
    "unchanged": lambda data, tmp_path: None,
    "whole array": lambda data, tmp_path: data.__iadd__(1),
    "one element": lambda data, tmp_path: data.__setitem__(-1, 7.0),
    "read() into it": write_with_read_syscall,
}


@pytest.mark.parametrize("allocate", [np.arange, np.zeros], ids=["written", "untouched pages"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_large_array_reused_across_calls_is_copied_again_exactly_when_changed(change, allocate, tmp_path):
    # Fingerprinted by the second and third calls, its pages watched from the third on (where
    # the kernel can): either proof must see each kind of change.
    data = allocate(4_000_000).astype(np.float64, copy=False)  # 32 MB: kept across calls
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(slice_total)(data, i, 8) for i in range(8))
        assert bytes_copied(parallel) == data.nbytes
        for _ in range(3):
            parallel(delayed(slice_total)(data, i, 8) for i in range(8))
            assert bytes_copied(parallel) == 0
        CHANGES[change](data, tmp_path)
        total = sum(parallel(delayed(slice_total)(data, i, 8) for i in range(8)))
        copied = bytes_copied(parallel)
    assert total == float(data.sum())
    assert copied == (0 if change == "unchanged" else data.nbytes)


def test_an_array_and_a_view_of_it_reused_across_calls_are_never_stale():
    # Two overlapping large buffers (the array and its first half) watched at once: proving one
    # unchanged must never hide a write from the other.
    data = np.ones(6_000_000)
    half = data[: len(data) // 2]
    with Parallel(n_jobs=2) as parallel:
        for step in range(12):
            totals = parallel(delayed(np.sum)(a) for a in [data, half, data, half])
            assert totals == [float(data.sum()), float(half.sum())] * 2, step
            if step % 4 == 3:  # stable for three calls (watched), then written through one
                (half if step % 8 == 3 else data)[step] += 1.0


def test_a_large_array_shared_by_two_blocks_is_never_stale_in_either():
    data = np.ones(4_000_000)
    with Parallel(n_jobs=2) as first, Parallel(n_jobs=2, backend="loky") as second:
        for step in range(3):
            for parallel in (first, second, first):
                assert sum(parallel(delayed(slice_total)(data, i, 4) for i in range(4))) == float(data.sum())
            data[step * 1000] += 1.0


def large_argument_maps(_=None):
    """How many large argument chunks this worker maps (kept across jobs or in use)."""
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if is_shared_memory(line, "arguments"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                count += end - start > 16 << 20
    return count


def large_argument_maps_after_unmapping(_=None):
    import time

    deadline = time.monotonic() + 10
    while large_argument_maps() and time.monotonic() < deadline:
        time.sleep(0.01)
    return large_argument_maps()


def test_workers_let_go_of_kept_arguments_when_the_call_ends():
    data = np.ones(4_000_000)  # 32 MB: a chunk of its own, kept mapped across jobs
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(slice_total)(data, i, 8) for i in range(8))
        assert max(parallel(delayed(large_argument_maps)() for _ in range(4))) >= 1
    # The block is over: its arena is gone, and the workers were told to drop what they kept
    # (their helper thread unmaps asynchronously: each worker waits for it, boundedly).
    assert Parallel(n_jobs=2)(delayed(large_argument_maps_after_unmapping)() for _ in range(4)) == [0, 0, 0, 0]
