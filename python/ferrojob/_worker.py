"""Worker process entry point: the Rust loop serves the socket, this module runs the tasks.

Started by the pool as ``python -c "...; from ferrojob._worker import main; main()"``.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import sys
from time import monotonic, perf_counter
from typing import Any

from . import _failures
from ._core import run_items
from ._pickling import dumps_result, type_name
from ._shared_objects import load_job
from ._tasks import CallSettings, ItemsGroup, JobBody, JobResults

_status: Any = None  # memoryview of the status words in shared memory
_UNMEASURED = -1.0  # a failed job's time: the engine's own clock
_call = CallSettings(None, "")  # the settings of the current call (see _on_call)
_NO_KWARGS: dict = {}
_TASKS_STARTED = 1  # index of the tasks-started word (the engine's STATUS_TASKS_STARTED)
_STOP = 2  # index of the stop word: set by the parent's supervisor past max_worker_memory


def main() -> None:
    from . import _core
    from .backends.processes import adopt_worker_mark

    adopt_worker_mark()
    assert (_core.STATUS_TASKS_STARTED, _core.STATUS_STOP) == (_TASKS_STARTED, _STOP)
    try:
        _core.serve_worker(_on_init, _on_call, _run_job)
    except OSError as error:
        sys.stderr.write(f"ferrojob worker {os.getpid()}: its socket to the parent broke: {error}\n")
        _flush_output()
        os._exit(_failures.CHANNEL_LOST_EXIT)


def _on_init(payload: bytes, status: Any) -> None:
    global _status
    _status = status
    # On a timeout the parent sends SIGUSR1 before killing: the stuck task's stack goes to
    # stderr, whose tail the parent keeps for the TaskTimeoutError.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=False)
    # A fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL) writes the Python stack too: the
    # crash report's stderr tail then says where the task died.
    faulthandler.enable(file=sys.stderr, all_threads=False)
    settings = pickle.loads(payload)
    sys.path[:] = settings["sys_path"]
    if settings.get("authkey"):
        import multiprocessing

        multiprocessing.current_process().authkey = settings["authkey"]  # wrapped by the setter
    if settings.get("initializer"):
        _initialize(settings["initializer"])


def _on_call(payload: bytes) -> None:
    """A new call's settings, before its first job here: tasks run in the caller's directory."""
    global _call
    call: CallSettings = pickle.loads(payload)
    if call.cwd != _call.cwd:
        try:
            os.chdir(call.cwd)
        except OSError:
            pass  # gone, or not ours: tasks run where the worker is
    _call = call


def _initialize(pickled: bytes) -> None:
    """Run the call's ``initializer(*initargs)`` once, before the worker's first task. If it
    fails, the worker says so on stderr (its tail reaches the parent's report) and exits: the
    parent's start-up checks turn that into one clear error, never a respawn loop."""
    name = "the initializer"
    try:
        initializer, initargs = pickle.loads(pickled)
        name = f"the initializer {getattr(initializer, '__qualname__', repr(initializer))}"
        initializer(*initargs)
    except BaseException as error:
        sys.stderr.write(f"ferrojob: {name} failed:\n{_failures.traceback_text(error)}")
        _flush_output()
        os._exit(_failures.INITIALIZER_FAILED_EXIT)


def _run_job(payload: bytes, buffers: list[Any]) -> tuple[bool, bytes, list[Any], float]:
    """Run one batch.

    ``(True, pickled (results, failed offsets), their out-of-band buffers, seconds the tasks
    took)`` or ``(False, failure report, [], -1)``. With ``return_exceptions`` (``collect``), a
    task that raises leaves its report as its result.
    """
    arrived, unpickling = monotonic(), perf_counter()
    status, slot, stop = _status, _TASKS_STARTED, _STOP
    started = 0
    results: list[Any] = []
    failed: list[int] = []  # offsets of the failure reports among the results (collect)
    append = results.append
    try:
        # Large objects shared by the call's tasks arrive once per batch (``_shared_objects``).
        job = JobBody._make(load_job(payload, buffers))
        groups, collect = job.groups, job.collect
    except BaseException as error:  # whatever unpickling raised, the parent hears it
        return False, _unloadable_arguments(error), [], _UNMEASURED
    began = perf_counter()
    loaded = began - unpickling
    try:
        if not _numpy_allocator_checked:
            _share_numpy_arrays()
        for group in groups:
            if type(group) is ItemsGroup:
                started, failure = _run_items(group, collect, results, failed, started)
                if failure is not None:
                    return False, _raised(failure, started - 1), [], _UNMEASURED
                continue
            function, args_list, kwargs_list = group
            if kwargs_list is None:
                kwargs_list = [_NO_KWARGS] * len(args_list)
            for args, kwargs in zip(args_list, kwargs_list, strict=True):
                if started and status[stop]:
                    # Past max_worker_memory (the parent's supervisor says so): stop here; the
                    # parent runs the rest of the batch on a fresh worker (this one is replaced).
                    raise _MemoryCapReached
                started += 1
                status[slot] = started
                if not collect:
                    append(function(*args, **kwargs))
                    continue
                try:
                    append(function(*args, **kwargs))
                except BaseException as error:  # return_exceptions: the error is the result
                    failed.append(started - 1)
                    append(_failures.raised(error, started - 1))
    except _MemoryCapReached:
        pass
    except BaseException as error:
        # KeyboardInterrupt and SystemExit included: raised by the task, they are its result,
        # re-raised in the parent with the task named.
        return False, _raised(error, started - 1), [], _UNMEASURED
    finally:
        _flush_output()
    timing = (arrived, loaded, perf_counter() - began)
    try:
        body, out_of_band = dumps_result(tuple(JobResults(results, failed, timing)), _call.threshold)
    except Exception:
        return False, _unpicklable_result(results), [], _UNMEASURED
    # The reported time is the tasks' and their results' pickling: the fixed cost of a job
    # (receiving, decoding) would make one-task probes look slow and batches grow slowly.
    return True, body, out_of_band, perf_counter() - began


def _run_items(
    group: ItemsGroup, collect: bool, results: list[Any], failed: list[int], started: int
) -> tuple[int, BaseException | None]:
    """Run a map chunk at C speed (``_core.run_items``); returns the job's tasks started so far
    and, without ``collect``, the error that stopped it. Past max_worker_memory the chunk ends
    early (``_MemoryCapReached``)."""
    # A chunk of a range travels as the range itself (a few bytes, not a list of ints).
    items, index = group.items if type(group.items) is list else list(group.items), 0
    while True:
        stopped = run_items(group.function, items, group.star, index, results, started + index)
        if stopped is None:
            return started + len(items), None
        at, error = stopped
        if error is None:
            raise _MemoryCapReached
        if not collect:
            return started + at + 1, error
        failed.append(len(results))
        results.append(_failures.raised(error, started + at))
        index = at + 1


_numpy_allocator_checked = False


def _share_numpy_arrays() -> None:
    """With ``FERROJOB_NUMPY_ALLOCATOR=1``: once numpy is imported, have it allocate large arrays
    in shared memory, so that returning one to the parent copies nothing.

    Off by default: where the kernel gives shared memory no huge pages (``shmem_enabled=never``,
    the usual default), filling fresh shared pages costs more than numpy's huge-page heap plus
    one copy (measured: 20 results of 50 MB, 387 ms with it, 328 ms without).
    """
    global _numpy_allocator_checked
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    _numpy_allocator_checked = True
    if os.environ.get("FERROJOB_NUMPY_ALLOCATOR", "0") != "1":
        return
    try:
        major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    except ValueError:
        return
    if (major, minor) >= (1, 22):
        from . import _core

        _core.install_numpy_allocator()


class _MemoryCapReached(Exception):
    """Ends a batch early: the worker is over max_worker_memory."""


def _unloadable_arguments(error: BaseException) -> bytes:
    return _failures.dumps(_failures.ArgumentsUnloadable(type_name(error), str(error), _failures.traceback_text(error)))


def _raised(error: BaseException, offset: int) -> bytes:
    return _failures.dumps(_failures.raised(error, offset))


def _unpicklable_result(results: list[Any]) -> bytes:
    for offset, value in enumerate(results):
        try:
            dumps_result(value)
        except Exception as error:
            return _failures.dumps(_failures.ResultUnpicklable(offset, type_name(value), str(error)))
    return _failures.dumps(_failures.ResultUnpicklable(0, "list", "the results could not be pickled together"))


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


if __name__ == "__main__":  # python -m ferrojob._worker (with the socket on fd 3)
    main()
