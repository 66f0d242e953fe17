"""Worker processes: exceptions, crashes, timeouts, Ctrl-C, and nothing left behind."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import (
    KILLED_PARENT,
    assert_workers_died_with_their_parent,
    children,
    open_fds,
    process_state,
    worker_children,
)
from ferrojob import Parallel, TaskTimeoutError, WorkerCrashedError, delayed
from ferrojob.errors import RemoteTraceback


class CustomError(Exception):
    def __init__(self, message, detail):
        super().__init__(message)
        self.detail = detail


def fail_on(x, bad):
    if x == bad:
        raise CustomError(f"bad value {x}", detail={"x": x})
    return x


def divide(x):
    return 1 / x


def exit_on(x, bad, code=3):
    if x == bad:
        os._exit(code)
    return x


def signal_on(x, bad, signum):
    if x == bad:
        os.kill(os.getpid(), signum)
        time.sleep(10)
    return x


def sleep_on(x, bad, seconds=60):
    if x == bad:
        time.sleep(seconds)
    return x


def record(x, directory):
    open(os.path.join(directory, str(x)), "w").close()
    if x == 0:
        raise ValueError("first task fails")
    time.sleep(0.01)
    return x


def pid_of(_=None):
    return os.getpid()


def no_zombie_children():
    return all(process_state(pid) not in ("Z", None) for pid in children())


# -- exceptions ---------------------------------------------------------------------------------


def test_exception_keeps_its_type_message_and_attributes():
    with pytest.raises(CustomError) as info:
        Parallel(n_jobs=2)(delayed(fail_on)(x, 7) for x in range(20))
    assert str(info.value) == "bad value 7"
    assert info.value.detail == {"x": 7}


def test_remote_traceback_is_the_cause():
    with pytest.raises(ZeroDivisionError) as info:
        Parallel(n_jobs=2)(delayed(divide)(x) for x in [1, 0, 2])
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert "Traceback of task 1: divide(0) in its worker process" in text
    assert "return 1 / x" in text
    assert "ZeroDivisionError: division by zero" in text


def test_unpicklable_exception_still_surfaces():
    def raise_local():
        class LocalError(Exception):
            pass

        raise LocalError("from a local class")

    with pytest.raises(Exception, match="from a local class"):
        Parallel(n_jobs=2)([delayed(raise_local)()])


def test_exception_cancels_tasks_not_started(tmp_path):
    with pytest.raises(ValueError, match="first task fails"):
        Parallel(n_jobs=2, batch_size=1)(delayed(record)(x, str(tmp_path)) for x in range(1000))
    # No task runs on after the call: the pool killed the busy workers and reaped them.
    assert len(os.listdir(tmp_path)) < 100


def test_pool_is_usable_after_an_exception():
    with pytest.raises(CustomError):
        Parallel(n_jobs=2)(delayed(fail_on)(x, 0) for x in range(5))
    assert Parallel(n_jobs=2)(delayed(fail_on)(x, -1) for x in range(5)) == list(range(5))


def test_exception_in_the_threading_backend():
    with pytest.raises(CustomError, match="bad value 3"):
        Parallel(n_jobs=2, backend="threading")(delayed(fail_on)(x, 3) for x in range(10))


# -- crashes ------------------------------------------------------------------------------------


def test_os_exit_is_reported_with_the_task_and_exit_code():
    with pytest.raises(RuntimeError) as info:
        Parallel(n_jobs=2)(delayed(exit_on)(x, 4, 3) for x in range(10))
    error = info.value
    assert isinstance(error, WorkerCrashedError)
    message = str(error)
    assert "exited with code 3 while running task 4: exit_on(4, 4, 3)" in message
    assert "the pool replaced the worker" in message


@pytest.mark.parametrize("signum, name", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "SIGKILL")])
def test_killed_worker_is_reported_with_the_signal(signum, name):
    with pytest.raises(
        WorkerCrashedError, match=rf"was killed by signal {name} \({int(signum)}\) while running task 2"
    ):
        Parallel(n_jobs=2)(delayed(signal_on)(x, 2, signum) for x in range(6))


def test_next_call_works_after_a_crash():
    with pytest.raises(WorkerCrashedError):
        Parallel(n_jobs=2)(delayed(exit_on)(x, 0) for x in range(4))
    assert Parallel(n_jobs=2)(delayed(exit_on)(x, -1) for x in range(100)) == list(range(100))
    assert no_zombie_children()


def test_every_worker_crashing_at_once():
    with pytest.raises(WorkerCrashedError):
        Parallel(n_jobs=2, batch_size=1)(delayed(os._exit)(1) for _ in range(10))
    assert Parallel(n_jobs=2)(delayed(pid_of)(x) for x in range(4))


def test_crash_inside_a_context_manager_session():
    with Parallel(n_jobs=2) as parallel:
        with pytest.raises(WorkerCrashedError):
            parallel(delayed(exit_on)(x, 1) for x in range(4))
        assert parallel(delayed(exit_on)(x, -1) for x in range(4)) == [0, 1, 2, 3]


# -- timeouts -----------------------------------------------------------------------------------


def test_timeout_raises_a_builtin_timeout_error():
    with pytest.raises(TimeoutError) as info:
        Parallel(n_jobs=2, timeout=0.5)(delayed(sleep_on)(x, 3) for x in range(6))
    assert isinstance(info.value, TaskTimeoutError)
    assert "task 3: sleep_on(3, 3) ran longer than timeout=0.5 s" in str(info.value)


def test_pool_is_usable_after_a_timeout():
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, timeout=0.3)(delayed(sleep_on)(x, 0) for x in range(2))
    assert Parallel(n_jobs=2, timeout=30)(delayed(sleep_on)(x, -1) for x in range(10)) == list(range(10))
    assert no_zombie_children()


def test_timeout_with_threads():
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, backend="threading", timeout=0.3)(delayed(sleep_on)(x, 0, 2) for x in range(2))


# -- nothing left behind ------------------------------------------------------------------------


def test_no_fd_or_process_leak_across_failures():
    def one_round():
        with pytest.raises(CustomError):
            Parallel(n_jobs=2)(delayed(fail_on)(x, 5) for x in range(10))
        with pytest.raises(WorkerCrashedError):
            Parallel(n_jobs=2)(delayed(exit_on)(x, 1) for x in range(4))
        with pytest.raises(TimeoutError):
            Parallel(n_jobs=2, timeout=0.2)(delayed(sleep_on)(x, 1) for x in range(3))
        assert Parallel(n_jobs=2)(delayed(pid_of)(x) for x in range(10))

    one_round()
    fds, kids = open_fds(), len(worker_children())
    for _ in range(5):
        one_round()
    assert open_fds() == fds
    assert len(worker_children()) == kids <= 2
    assert no_zombie_children()


def test_workers_die_with_a_killed_parent(script):
    assert_workers_died_with_their_parent(script(KILLED_PARENT))


def test_ctrl_c_stops_every_worker(script, tmp_path):
    done = script(
        f"""
        import os, signal, threading, time
        from ferrojob import Parallel, delayed

        def stuck(x):
            open(os.path.join({str(tmp_path)!r}, f"pid-{{os.getpid()}}"), "w").close()
            time.sleep(120)

        def interrupt_when_running():
            deadline = time.monotonic() + 60
            while len([f for f in os.listdir({str(tmp_path)!r}) if f.startswith("pid-")]) < 2:
                if time.monotonic() > deadline:
                    os._exit(3)  # the workers never started their tasks
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_when_running, daemon=True).start()
        try:
            Parallel(n_jobs=2, batch_size=1)(delayed(stuck)(x) for x in range(4))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        pids = [int(f[4:]) for f in os.listdir({str(tmp_path)!r}) if f.startswith("pid-")]
        children = set()
        for task in os.listdir(f"/proc/{{os.getpid()}}/task"):
            children |= set(open(f"/proc/{{os.getpid()}}/task/{{task}}/children").read().split())
        alive = [p for p in pids if os.path.exists(f"/proc/{{p}}")]
        print("alive", alive, "children", sorted(children), flush=True)
        """,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "interrupted"
    assert lines[1] == "alive [] children []"


def _warm_pool():
    from ferrojob.backends import processes

    Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(4))
    return processes._SHARED.pool


def test_the_warm_pool_survives_environment_changes_that_do_not_shape_workers(monkeypatch):
    pool = _warm_pool()
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")  # pytest does this before every test
    assert _warm_pool() is pool
    # A variable ferrojob reads in its workers does restart them.
    monkeypatch.setenv("FERROJOB_NUMPY_ALLOCATOR", "0")
    assert _warm_pool() is not pool


def test_tasks_run_in_the_directory_of_each_call_without_a_new_pool(monkeypatch, tmp_path):
    pool = _warm_pool()
    monkeypatch.chdir(tmp_path)
    assert set(Parallel(n_jobs=2)(delayed(os.getcwd)() for _ in range(10))) == {str(tmp_path)}
    assert _warm_pool() is pool
