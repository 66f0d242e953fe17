"""The joblib-compatible API: results, ordering, backends, configuration."""

from __future__ import annotations

import contextlib
import os
import re
import threading

import ferrojob
import pytest
from ferrojob import Parallel, delayed, effective_n_jobs, parallel_backend, parallel_config


def my_function(x):
    return 2 * x


def worker_pid(_=None):
    return os.getpid()


def identity(x):
    return x


def add(a, b=0, *, c=0):
    return a + b + c


# -- the seed scenarios -------------------------------------------------------------------------


def test_delayed_call_over_a_list_of_functions():
    assert Parallel(n_jobs=2)(delayed(my_function)(3) for f in [my_function]) == [6]


def test_doubling_one_to_five():
    assert Parallel(n_jobs=2)(delayed(my_function)(x) for x in [1, 2, 3, 4, 5]) == [2, 4, 6, 8, 10]


def test_closure_multiplier():
    def make_multiplier(k):
        def multiply(x):
            return k * x

        return multiply

    triple = make_multiplier(3)
    assert Parallel(n_jobs=2)(delayed(triple)(x) for x in range(5)) == [0, 3, 6, 9, 12]


def test_lambda_capturing_a_local():
    offset = 10
    assert Parallel(n_jobs=2)(delayed(lambda x: x + offset)(x) for x in range(4)) == [10, 11, 12, 13]


def test_main_module_function_runs_in_workers(script):
    done = script(
        """
        import os
        from ferrojob import Parallel, delayed

        def square(x):
            return x * x, os.getpid()

        if __name__ == "__main__":
            results = Parallel(n_jobs=2)(delayed(square)(x) for x in range(20))
            assert [r for r, _ in results] == [x * x for x in range(20)]
            assert os.getpid() not in {pid for _, pid in results}
            print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- results and ordering -----------------------------------------------------------------------


def test_tasks_run_in_other_processes():
    pids = set(Parallel(n_jobs=2)(delayed(worker_pid)(i) for i in range(50)))
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_many_tiny_tasks_keep_their_order():
    n = 20_000
    assert Parallel(n_jobs=2)(delayed(my_function)(x) for x in range(n)) == [2 * x for x in range(n)]


def test_positional_and_keyword_arguments():
    calls = [delayed(add)(1), delayed(add)(1, 2), delayed(add)(1, b=5), delayed(add)(1, c=7)]
    assert Parallel(n_jobs=2)(calls) == [1, 3, 6, 8]


def test_keywords_first_met_late_in_a_batch_stay_with_their_calls():
    calls = [delayed(add)(i) for i in range(50)] + [delayed(add)(1, c=7)] + [delayed(add)(i, b=1) for i in range(5)]
    calls += [delayed(my_function)(1), delayed(add)(2)]
    expected = list(range(50)) + [8] + [i + 1 for i in range(5)] + [2, 2]
    assert Parallel(n_jobs=2, batch_size=100)(calls) == expected


def test_mixed_functions_in_one_call():
    calls = [delayed(my_function)(1), delayed(str)(2), delayed(my_function)(3), delayed(len)("ab")]
    assert Parallel(n_jobs=2)(calls) == [2, "2", 6, 2]


def test_empty_iterable():
    assert Parallel(n_jobs=2)([]) == []
    assert list(Parallel(n_jobs=2, return_as="generator")(iter([]))) == []


def test_hand_written_call_triples_are_accepted():
    assert Parallel(n_jobs=2)([(my_function, [4], {}), (add, (1,), {"b": 1})]) == [8, 2]


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_fixed_batch_sizes(batch_size):
    result = Parallel(n_jobs=2, batch_size=batch_size)(delayed(my_function)(x) for x in range(101))
    assert result == [2 * x for x in range(101)]


@pytest.mark.parametrize("pre_dispatch", [1, "all", "n_jobs", "3 * n_jobs"])
def test_pre_dispatch_values(pre_dispatch):
    result = Parallel(n_jobs=2, pre_dispatch=pre_dispatch)(delayed(identity)(x) for x in range(30))
    assert result == list(range(30))


# -- return_as ----------------------------------------------------------------------------------


def test_generator_is_ordered_and_lazy():
    consumed = []

    def calls():
        for x in range(10_000):
            consumed.append(x)
            yield delayed(identity)(x)

    results = Parallel(n_jobs=2, return_as="generator", batch_size=10)(calls())
    first = next(results)
    assert first == 0
    # Only the pre-dispatched batches have been read, not the whole input.
    assert len(consumed) < 10_000
    assert [first, *results] == list(range(10_000))
    assert len(consumed) == 10_000


def test_generator_unordered_returns_every_result():
    results = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(identity)(x) for x in range(500))
    assert not isinstance(results, list)
    assert sorted(results) == list(range(500))


def test_closing_a_generator_early_leaves_the_pool_usable():
    results = Parallel(n_jobs=2, return_as="generator", batch_size=1)(delayed(identity)(x) for x in range(1000))
    assert next(results) == 0
    with pytest.warns(UserWarning, match=r"closed before its end: \d+ (computed results|tasks sent)"):
        results.close()  # as joblib: the work that went unused is told
    assert Parallel(n_jobs=2)(delayed(identity)(x) for x in range(5)) == list(range(5))


def test_a_generator_read_to_its_end_or_failing_warns_of_nothing_unused():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = Parallel(n_jobs=2, return_as="generator")(delayed(identity)(x) for x in range(50))
        assert list(results) == list(range(50))
        results = Parallel(n_jobs=2, return_as="generator")(delayed(divmod)(1, x) for x in range(-3, 3))
        with pytest.raises(ZeroDivisionError):
            list(results)
        sequential = Parallel(n_jobs=1, return_as="generator")(delayed(identity)(x) for x in range(50))
        assert next(sequential) == 0
        sequential.close()  # lazy in this thread: nothing was computed ahead
    import gc

    never_read = Parallel(n_jobs=2, return_as="generator", batch_size=1)(delayed(identity)(x) for x in range(100))
    with pytest.warns(UserWarning, match="closed before its end"):
        del never_read  # dropped unread: its tasks were already sent
        gc.collect()


def waits_for_others_then_counts(x, folder, expected):
    """Task 0 straggles: it waits (up to 2 s) for ``expected`` other tasks to have run, then
    says how many did. The others leave a file each."""
    import time

    if x == 0:
        deadline = time.monotonic() + 2
        while len(os.listdir(folder)) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(os.listdir(folder))
    open(os.path.join(folder, str(x)), "w").close()
    return -1


def test_a_straggler_holds_a_generators_run_ahead_within_pre_dispatch(tmp_path):
    # 200 tasks of one each, 4 batches in the window: while the consumer waits for task 0, at
    # most 3 others may complete (their results wait for it) before the window is full. A list
    # call is not bounded: it computes on.
    calls = [delayed(waits_for_others_then_counts)(x, str(tmp_path), 50) for x in range(200)]
    generator = Parallel(n_jobs=2, return_as="generator", batch_size=1, pre_dispatch=4)(calls)
    assert next(generator) <= 3
    with pytest.warns(UserWarning, match="closed before its end"):
        generator.close()


def make_and_drop_a_generator():
    results = Parallel(n_jobs=2, return_as="generator", batch_size=1)(delayed(identity)(x) for x in range(100))
    next(results)
    return make_and_drop_a_generator.__code__.co_firstlineno + 1  # the line above's call


def test_a_generator_closed_late_warns_at_the_line_that_made_it():
    import gc

    with pytest.warns(UserWarning, match="closed before its end") as caught:
        line = make_and_drop_a_generator()  # dropped as the function returns
        gc.collect()
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


# -- backends -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["loky", "processes", "multiprocessing"])
def test_process_backend_names(backend):
    pids = Parallel(n_jobs=2, backend=backend)(delayed(worker_pid)(i) for i in range(10))
    assert os.getpid() not in pids


def test_threading_backend_runs_in_threads_of_this_process():
    seen = Parallel(n_jobs=2, backend="threading")(
        delayed(lambda: (os.getpid(), threading.get_ident()))() for _ in range(20)
    )
    assert {pid for pid, _ in seen} == {os.getpid()}


def test_threading_backend_shares_memory():
    box = []
    Parallel(n_jobs=2, backend="threading")(delayed(box.append)(x) for x in range(10))
    assert sorted(box) == list(range(10))


def test_threading_backend_accepts_a_lock_argument():
    lock = threading.Lock()

    def locked_double(the_lock, x):
        with the_lock:
            return 2 * x

    assert Parallel(n_jobs=2, backend="threading")(delayed(locked_double)(lock, x) for x in range(4)) == [
        0,
        2,
        4,
        6,
    ]


def test_require_sharedmem_selects_threads():
    box = []
    Parallel(n_jobs=2, require="sharedmem")(delayed(box.append)(x) for x in range(5))
    assert sorted(box) == list(range(5))


def test_prefer_threads():
    pids = Parallel(n_jobs=2, prefer="threads")(delayed(worker_pid)() for _ in range(4))
    assert set(pids) == {os.getpid()}


def test_sequential_backend_runs_in_this_thread():
    here = threading.get_ident()
    seen = Parallel(n_jobs=4, backend="sequential")(delayed(threading.get_ident)() for _ in range(3))
    assert seen == [here] * 3


def test_n_jobs_one_runs_in_this_process():
    assert Parallel(n_jobs=1)(delayed(worker_pid)() for _ in range(3)) == [os.getpid()] * 3


def test_n_jobs_none_means_one():
    assert Parallel()(delayed(worker_pid)() for _ in range(2)) == [os.getpid()] * 2


def test_register_parallel_backend():
    from ferrojob.backends.threads import ThreadingBackend

    class Recording(ThreadingBackend):
        used = 0

        def open(self, n_jobs, options):
            Recording.used += 1
            return super().open(n_jobs, options)

    ferrojob.register_parallel_backend("recording", Recording)
    assert Parallel(n_jobs=2, backend="recording")(delayed(my_function)(x) for x in range(3)) == [0, 2, 4]
    assert Recording.used == 1


# -- configuration ------------------------------------------------------------------------------


def test_parallel_config_sets_backend_and_n_jobs():
    with parallel_config(backend="threading", n_jobs=2):
        pids = Parallel()(delayed(worker_pid)() for _ in range(4))
    assert set(pids) == {os.getpid()}
    with parallel_config(n_jobs=2):
        pids = Parallel()(delayed(worker_pid)() for _ in range(4))
    assert os.getpid() not in pids


def test_parallel_config_as_decorator():
    @parallel_config(backend="sequential")
    def run():
        return Parallel(n_jobs=2)(delayed(threading.get_ident)() for _ in range(2))

    assert run() == [threading.get_ident()] * 2


def test_parallel_backend_alias():
    with parallel_backend("threading", n_jobs=2):
        assert set(Parallel()(delayed(worker_pid)() for _ in range(3))) == {os.getpid()}


def test_explicit_arguments_beat_the_config():
    with parallel_config(backend="threading"):
        pids = Parallel(n_jobs=2, backend="loky")(delayed(worker_pid)() for _ in range(4))
    assert os.getpid() not in pids


def test_cpu_count_and_effective_n_jobs():
    cpus = ferrojob.cpu_count()
    assert cpus >= 1
    assert effective_n_jobs(-1) == cpus
    assert effective_n_jobs(-2) == max(cpus - 1, 1)
    assert effective_n_jobs(3) == 3
    assert effective_n_jobs(None) == 1
    with parallel_config(n_jobs=2):
        assert effective_n_jobs(None) == 2


def test_context_manager_reuses_workers():
    with Parallel(n_jobs=2) as parallel:
        first = set(parallel(delayed(worker_pid)(i) for i in range(40)))
        second = set(parallel(delayed(worker_pid)(i) for i in range(40)))
    assert len(first | second) <= 2  # the same two workers served both calls


def test_workers_are_warm_across_calls():
    first = set(Parallel(n_jobs=2)(delayed(worker_pid)(i) for i in range(40)))
    second = set(Parallel(n_jobs=2)(delayed(worker_pid)(i) for i in range(40)))
    assert len(first | second) <= 2


def test_nested_parallel_inside_a_worker_runs_sequentially():
    def inner(x):
        return [*Parallel(n_jobs=2)(delayed(worker_pid)() for _ in range(3)), x]

    results = Parallel(n_jobs=2)(delayed(inner)(x) for x in range(2))
    for x, (a, b, c, marker) in enumerate(results):
        assert a == b == c != os.getpid()
        assert marker == x


# -- progress -----------------------------------------------------------------------------------


def test_verbose_prints_progress(capsys):
    Parallel(n_jobs=2, verbose=10)(delayed(identity)(x) for x in range(10))
    err = capsys.readouterr().err
    assert "Using backend" in err
    assert re.search(r"Done\s+10 out of\s+10", err)


def test_progress_bar_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    assert Parallel(n_jobs=2, progress=True)(delayed(identity)(x) for x in range(10)) == list(range(10))
    assert "10/10" in capsys.readouterr().err


def test_calls_from_several_threads_at_once():
    # One thread gets the warm pool, the others a private pool each, for the call's duration.
    outcomes: dict[int, list] = {}

    def call(n):
        outcomes[n] = Parallel(n_jobs=2)(delayed(my_function)(x) for x in range(n, n + 200))

    threads = [threading.Thread(target=call, args=(n,)) for n in (0, 1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {n: [2 * x for x in range(n, n + 200)] for n in (0, 1000, 2000)}


def test_a_managed_parallel_runs_one_call_at_a_time():
    with Parallel(n_jobs=2, return_as="generator") as parallel:
        first = parallel(delayed(abs)(-i) for i in range(10))
        with pytest.raises(RuntimeError, match="already running a call"):
            parallel(delayed(abs)(-i) for i in range(10))
        assert list(first) == list(range(10))
        assert list(parallel(delayed(abs)(-i) for i in range(3))) == [0, 1, 2]  # free again


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_any_parallel_runs_one_call_at_a_time_like_joblib(n_jobs):
    parallel = Parallel(n_jobs=n_jobs, return_as="generator")
    first = parallel(delayed(abs)(-i) for i in range(10))
    with pytest.raises(RuntimeError, match="This Parallel instance is already running"):
        parallel(delayed(abs)(-i) for i in range(10))
    assert list(first) == list(range(10))
    assert list(parallel(delayed(abs)(-i) for i in range(3))) == [0, 1, 2]  # free again once consumed


def test_backend_objects_joblib_accepts_are_accepted():
    import multiprocessing

    joblib_backends = pytest.importorskip("joblib._parallel_backends")
    for backend in (
        joblib_backends.LokyBackend(),
        joblib_backends.ThreadingBackend(),
        joblib_backends.SequentialBackend(),
        multiprocessing.get_context("spawn"),
    ):
        assert Parallel(n_jobs=2, backend=backend)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]

    class Custom(joblib_backends.ThreadingBackend):
        submitted = 0

        def submit(self, func, callback=None):
            Custom.submitted += 1
            return super().submit(func, callback=callback)

    # A custom joblib backend is driven through its own API.
    assert Parallel(n_jobs=2, backend=Custom())(delayed(abs)(-i) for i in range(10)) == list(range(10))
    assert Custom.submitted > 0
    with pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2, backend=Custom())(delayed(divmod)(1, i) for i in range(-2, 3))
    from ferrojob import register_parallel_backend

    register_parallel_backend("custom_threads", Custom)
    assert Parallel(n_jobs=2, backend="custom_threads")(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_config_blocks_give_what_joblibs_give():
    from ferrojob.backends.processes import ProcessBackend

    with parallel_config("loky", n_jobs=3) as config:
        assert isinstance(config["backend"], ProcessBackend) and config["n_jobs"] == 3
        assert config["verbose"] is None  # not set
    with parallel_backend("threading", n_jobs=2) as (backend, n_jobs):
        assert backend.name == "threading" and n_jobs == 2
        assert Parallel().n_jobs == 2
    joblib_backends = pytest.importorskip("joblib._parallel_backends")

    class Retrieving(joblib_backends.ThreadingBackend):
        entered = 0

        @contextlib.contextmanager
        def retrieval_context(self):
            self.entered += 1
            yield

    with parallel_config(Retrieving()) as config:
        # The instance Parallel runs on: retrieval is wrapped once per call, as joblib does.
        Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(20))
        assert isinstance(config["backend"], Retrieving) and config["backend"].entered == 1


def test_make_default_is_honoured():
    from ferrojob import backends
    from ferrojob.backends.threads import ThreadingBackend

    class Marked(ThreadingBackend):
        name = "marked"

    backends.register_parallel_backend("marked", Marked, make_default=True)
    try:
        seen = Parallel(n_jobs=2)(delayed(lambda: threading.current_thread().name)() for _ in range(2))
        assert all(name != "MainThread" for name in seen)  # threads, not processes
        assert backends.default_backend() == "marked"
    finally:
        backends.register_parallel_backend("loky", backends._processes, make_default=True)


def test_parallel_shows_the_effective_configuration_and_inconsistent_settings_are_refused():
    from ferrojob import parallel_config

    assert Parallel().n_jobs is None and Parallel().verbose == 0
    with parallel_config(n_jobs=3, verbose=5):
        assert Parallel().n_jobs == 3 and Parallel().verbose == 5
        assert Parallel(n_jobs=2).n_jobs == 2
    with pytest.raises(ValueError, match="inconsistent"):
        Parallel(prefer="processes", require="sharedmem")
    with pytest.raises(ValueError, match="inconsistent"):
        parallel_config(prefer="processes", require="sharedmem")
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        parallel_config(inner_max_num_threads=2)
    for threads in ("threading", "sequential"):  # nothing to cap: no worker processes
        with pytest.raises(ValueError, match="does not accept inner_max_num_threads"):
            parallel_config(threads, inner_max_num_threads=1)
    with parallel_config("multiprocessing", inner_max_num_threads=1):  # ferrojob's processes: capped
        assert Parallel(n_jobs=2)(delayed(abs)(-1) for _ in range(2)) == [1, 1]


def _wait_for(path, seconds=60):
    import os
    import time

    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return path


def test_a_generator_is_read_no_further_ahead_than_joblib_reads_it(tmp_path):
    read = []
    release = str(tmp_path / "go")

    def calls():
        for i in range(50):
            read.append(i)
            yield delayed(_wait_for)(release)

    results = Parallel(n_jobs=2, return_as="generator")(calls())
    # pre_dispatch="2 * n_jobs": 4 batches of one task out, and one batch per worker read ahead
    # at most (joblib reads 6 by its first result).
    assert len(read) <= 6
    (tmp_path / "go").touch()
    assert len(list(results)) == 50


def test_a_timeout_that_cannot_apply_in_process_is_warned_about():
    with pytest.warns(UserWarning, match="does not support timeout"):
        assert Parallel(n_jobs=1, timeout=1)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_the_unused_work_warning_points_at_the_line_that_dropped_the_generator():
    results = Parallel(n_jobs=2, return_as="generator")(delayed(abs)(-i) for i in range(1000))
    with pytest.warns(UserWarning, match="closed before its end") as caught:
        for value in results:
            if value == 5:
                break
        results.close()  # this line
    assert caught[0].filename == __file__
