"""When tasks fail: return_exceptions on every backend, and crash, timeout and start-up reports
that say why."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap

import pytest
from ferrojob import (
    Parallel,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
    delayed,
    parallel_config,
)
from ferrojob.errors import RemoteTraceback

BACKENDS = ["loky", "threading", "sequential"]
RETURN_AS = ["list", "generator", "generator_unordered"]


def fails_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_return_exceptions_puts_each_error_in_its_slot(backend, return_as):
    n_jobs = 1 if backend == "sequential" else 2
    results = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as, return_exceptions=True)(
        delayed(fails_on_odd)(i) for i in range(8)
    )
    results = list(results)
    assert len(results) == 8
    errors = [r for r in results if isinstance(r, ValueError)]
    assert sorted(str(e) for e in errors) == [f"odd {i}" for i in (1, 3, 5, 7)]
    assert sorted(r for r in results if not isinstance(r, BaseException)) == [0, 2, 4, 6]
    if return_as != "generator_unordered":
        assert [str(r) if isinstance(r, BaseException) else r for r in results] == [
            f"odd {i}" if i % 2 else i for i in range(8)
        ]
    if backend == "loky":
        assert isinstance(errors[0].__cause__, RemoteTraceback)
        assert "fails_on_odd" in str(errors[0].__cause__)


def test_return_exceptions_through_parallel_config_and_default_is_fail_fast():
    with parallel_config(return_exceptions=True):
        results = Parallel(n_jobs=2)(delayed(fails_on_odd)(i) for i in range(4))
    assert isinstance(results[1], ValueError) and results[2] == 2
    with pytest.raises(ValueError, match=r"odd [13]"):  # the first to fail, in time
        Parallel(n_jobs=2)(delayed(fails_on_odd)(i) for i in range(4))


def crash_on(x, bad, how="exit"):
    if x == bad:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSEGV)
    return x


def test_a_crashed_workers_other_tasks_run_again_and_the_culprit_is_reported():
    results = Parallel(n_jobs=2, batch_size=4, return_exceptions=True)(delayed(crash_on)(i, 5) for i in range(12))
    assert [r for r in results if not isinstance(r, BaseException)] == [i for i in range(12) if i != 5]
    error = results[5]
    assert isinstance(error, WorkerCrashedError)
    assert error.task_index == 5 and error.exitcode == 3 and error.function == "crash_on"
    assert "it had crashed a worker before too" in str(error)


def sleepy(x):
    import time

    if x == 2:
        time.sleep(60)
    return x


def brief_nap(x):
    import time

    time.sleep(3 if x == 2 else 0)
    return x


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_a_timed_out_task_gets_its_error_and_the_others_complete(backend):
    task = sleepy if backend == "loky" else brief_nap  # a thread finishes its task, unheard
    results = Parallel(n_jobs=2, backend=backend, batch_size=3, timeout=1, return_exceptions=True)(
        delayed(task)(i) for i in range(6)
    )
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 3, 4, 5]
    assert isinstance(results[2], TaskTimeoutError)


CRASHES = textwrap.dedent(
    """
    import ctypes, os, resource, sys, time


    def segfault_after_printing(x):
        sys.stderr.write("about to crash in native code\\n")
        sys.stderr.flush()
        ctypes.string_at(0)


    def exhaust_memory(x):
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        hoard = []
        try:
            while True:
                hoard.append(bytearray(32 << 20))
        except MemoryError:
            sys.stderr.write("fatal: out of memory\\n")
            sys.stderr.flush()
            os.abort()


    def exit_three(x):
        os._exit(3)


    def my_task(x):
        time.sleep(60)  # the line the timeout report must show


    def deaf_to_signals(x):
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        time.sleep(60)
    """
)


@pytest.fixture()
def crashes(tmp_path, monkeypatch):
    (tmp_path / "crashes.py").write_text(CRASHES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import crashes

    yield crashes
    sys.modules.pop("crashes", None)


def test_a_segfault_report_names_the_task_signal_and_native_cause(crashes, capfd):
    with pytest.raises(WorkerCrashedError) as raised:
        Parallel(n_jobs=2)(delayed(crashes.segfault_after_printing)(x) for x in ["an argument"] * 2)
    error = raised.value
    assert error.signal == signal.SIGSEGV and error.signal_name == "SIGSEGV"
    assert error.function == "segfault_after_printing" and error.args_repr == "'an argument'"
    assert error.task_index in (0, 1)
    assert "about to crash in native code" in error.stderr_tail
    # faulthandler is on for fatal signals in workers: the tail shows where the task died.
    assert "Fatal Python error: Segmentation fault" in error.stderr_tail
    assert "segfault_after_printing" in error.stderr_tail
    assert "native code" in error.likely_cause
    assert error.peak_rss and error.peak_rss > 1 << 20
    assert "likely cause: a crash in native code" in str(error)
    # The worker's stderr still reached ours, as it was written.
    assert "about to crash in native code" in capfd.readouterr().err


def test_an_out_of_memory_death_says_so_with_its_peak_memory(crashes):
    with pytest.raises(WorkerCrashedError) as raised:
        Parallel(n_jobs=2, batch_size=1)(delayed(crashes.exhaust_memory)(x) for x in range(2))
    error = raised.value
    assert error.signal == signal.SIGABRT
    assert "out of memory" in error.likely_cause
    assert error.peak_rss > 500 << 20


def test_os_exit_is_reported_with_its_code(crashes):
    with pytest.raises(WorkerCrashedError) as raised:
        Parallel(n_jobs=2)(delayed(crashes.exit_three)(x) for x in range(2))
    assert raised.value.exitcode == 3 and raised.value.signal is None
    assert "os._exit(3)" in raised.value.likely_cause


def test_a_timeout_report_shows_where_the_task_was_stuck(crashes):
    with pytest.raises(TaskTimeoutError) as raised:
        Parallel(n_jobs=2, timeout=1)(delayed(crashes.my_task)(x) for x in range(2))
    error = raised.value
    assert error.function == "my_task" and error.timeout == 1
    assert "crashes.py" in error.stack and "my_task" in error.stack
    sleep_line = 1 + CRASHES.splitlines().index("    time.sleep(60)  # the line the timeout report must show")
    assert f"line {sleep_line} in my_task" in error.stack
    # Under the frame, its source line, as Python's tracebacks show it.
    assert "time.sleep(60)  # the line the timeout report must show" in error.stack
    assert "where it was stuck:" in str(error) and "my_task" in str(error)


def test_workers_that_cannot_start_fail_the_call_clearly(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    # Shadows the standard library's numbers module in fresh interpreters only (this one has it).
    (broken / "numbers.py").write_text('raise ImportError("numbers is broken on purpose")\n')
    monkeypatch.setenv("PYTHONPATH", str(broken))
    with pytest.raises(WorkerStartError) as raised:
        Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))
    error = raised.value
    assert error.attempts == 3
    assert "numbers is broken on purpose" in error.stderr_tail
    assert "the worker could not start: ImportError: numbers is broken on purpose" in str(error)


def test_a_task_deaf_to_signals_is_still_stopped_on_time(crashes):
    with pytest.raises(TaskTimeoutError) as raised:
        Parallel(n_jobs=2, timeout=1)(delayed(crashes.deaf_to_signals)(x) for x in range(2))
    assert raised.value.stack.startswith("unavailable")


def test_task_timeout_error_is_also_multiprocessing_timeout_error_without_import_cost(script):
    done = script(
        """
        import sys
        import ferrojob
        assert "multiprocessing" not in sys.modules, "import ferrojob must stay light"
        import multiprocessing, pickle
        from ferrojob import TaskTimeoutError
        assert issubclass(TaskTimeoutError, multiprocessing.TimeoutError)
        assert issubclass(TaskTimeoutError, TimeoutError) and issubclass(TaskTimeoutError, ferrojob.FerrojobError)
        assert ferrojob.errors.TaskTimeoutError is TaskTimeoutError
        copy = pickle.loads(pickle.dumps(TaskTimeoutError("late", code="FJ302")))
        assert type(copy) is TaskTimeoutError and copy.code == "FJ302"
        try:
            ferrojob.Parallel(n_jobs=2, timeout=0.5)(ferrojob.delayed(__import__("time").sleep)(30) for _ in range(2))
        except multiprocessing.TimeoutError as error:
            print("caught", type(error).__name__)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "caught TaskTimeoutError" in done.stdout


def sleep_after_writing_pid(folder, seconds):
    """Leaves this worker's pid in ``folder`` (a file per task), then sleeps."""
    import time

    path = os.path.join(folder, str(os.getpid()))
    with open(path + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)


def wait_until(condition, seconds=30.0, what="the condition"):
    """Poll ``condition`` until it holds; fail after ``seconds`` (a deadline, not a timing claim)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never happened within {seconds} s")
        time.sleep(0.02)


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_timeout_fires_while_nobody_reads_the_generator(tmp_path):
    results = Parallel(n_jobs=2, timeout=1, return_as="generator")(
        delayed(sleep_after_writing_pid)(str(tmp_path), 120) for _ in range(2)
    )

    # The generator is never advanced while the tasks run: the pool's supervisor alone must stop
    # them (well before their 120 s sleep would end).
    def pids():
        return [int(name) for name in os.listdir(tmp_path) if not name.endswith(".tmp")]

    wait_until(lambda: len(pids()) == 2, what="both tasks starting")
    started = pids()
    wait_until(lambda: all(process_gone(pid) for pid in started), what="the stuck workers being stopped")
    with pytest.raises(TaskTimeoutError):
        next(results)


def test_a_stuck_thread_is_reported_while_the_other_threads_keep_producing():
    import threading
    import time

    release = threading.Event()
    done = []

    def task(i):
        if i == 0:
            release.wait(60)  # stuck until the test lets it go
        else:
            time.sleep(0.001)
            done.append(i)
        return i

    try:
        with pytest.raises(TaskTimeoutError):
            Parallel(n_jobs=2, backend="threading", timeout=1, batch_size=1)(delayed(task)(i) for i in range(20_000))
    finally:
        release.set()
    # Reported while the other thread was still producing, not after it ran out of work.
    assert len(done) < 19_999


def test_a_timeout_does_not_count_a_fresh_worker_importing_the_tasks_module(tmp_path, monkeypatch):
    # Importing this module takes 2 s (as scipy or scikit-learn can): longer than timeout=1, which
    # counts the task alone, not the worker loading what the task needs.
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(2)\n\ndef add_one(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import slow_to_import

    try:
        with Parallel(n_jobs=2, timeout=1) as parallel:
            assert parallel(delayed(slow_to_import.add_one)(i) for i in range(4)) == [1, 2, 3, 4]
    finally:
        sys.modules.pop("slow_to_import", None)


def exits(x):
    if x == 1:
        raise SystemExit(f"task {x} called sys.exit")
    return x


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
def test_a_task_raising_system_exit_lands_in_its_slot_on_every_backend(backend):
    n_jobs = 1 if backend == "sequential" else 2
    results = Parallel(n_jobs=n_jobs, backend=backend, return_exceptions=True)(delayed(exits)(i) for i in range(3))
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], SystemExit) and "task 1 called sys.exit" in str(results[1])


def test_a_threading_timeout_report_has_the_same_attributes_and_shows_the_source_line():
    import threading

    release = threading.Event()

    def waits_for_release(x):
        release.wait(60)  # where the thread is stuck
        return x

    try:
        with pytest.raises(TaskTimeoutError) as raised:
            Parallel(n_jobs=2, backend="threading", timeout=0.5)(delayed(waits_for_release)(i) for i in range(2))
    finally:
        release.set()
    error = raised.value
    assert error.task_index in (0, 1) and error.function.endswith("waits_for_release")
    assert error.args_repr in ("0", "1") and error.timeout == 0.5
    assert "in waits_for_release" in error.stack
    assert "release.wait(60)  # where the thread is stuck" in error.stack
    assert "where it was stuck:" in str(error)


def test_stacks_dumped_by_two_workers_at_once_come_out_as_whole_lines(script):
    done = script(
        """
        import time
        from ferrojob import Parallel, TaskTimeoutError, delayed

        def stuck_in_a_deep_call(depth):
            if depth:
                return stuck_in_a_deep_call(depth - 1)
            time.sleep(60)

        try:
            Parallel(n_jobs=2, timeout=1, batch_size=1)(delayed(stuck_in_a_deep_call)(30) for _ in range(2))
        except TaskTimeoutError:
            print("timed out")
        """
    )
    assert done.stdout.strip() == "timed out"
    frames = [line for line in done.stderr.splitlines() if "File " in line]
    assert frames, done.stderr
    for line in frames:
        assert re.fullmatch(r'  File ".*", line \d+ in [\w<>]+', line), line
