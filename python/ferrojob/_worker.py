"""Worker process entry point: the Rust loop serves the socket, this module runs the tasks.

Started by the pool as ``python -c "...; from ferrojob._worker import main; main()"``.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any

from . import _failures
from ._pickling import dumps_result, type_name

_status: Any = None  # memoryview of the status words in shared memory
_TASKS_STARTED = 1  # index of the tasks-started word (the engine's STATUS_TASKS_STARTED)


#: Exit code of a worker whose socket to the parent broke under it (a task closed fd 3).
CHANNEL_LOST_EXIT = 121


def main() -> None:
    from . import _core

    assert _core.STATUS_TASKS_STARTED == _TASKS_STARTED
    try:
        _core.serve_worker(_on_init, _run_job)
    except OSError as error:
        sys.stderr.write(f"ferrojob worker {os.getpid()}: its socket to the parent broke: {error}\n")
        _flush_output()
        os._exit(CHANNEL_LOST_EXIT)


def _on_init(payload: bytes, status: Any) -> None:
    global _status
    _status = status
    settings = pickle.loads(payload)
    sys.path[:] = settings["sys_path"]
    try:
        os.chdir(settings["cwd"])
    except OSError:
        pass


def _run_job(payload: bytes, buffers: list[Any]) -> tuple[bool, bytes, list[Any]]:
    """Run one batch.

    ``(True, pickled results, their out-of-band buffers)`` or ``(False, failure report, [])``.
    """
    status, slot = _status, _TASKS_STARTED
    started = 0
    results: list[Any] = []
    append = results.append
    try:
        threshold, groups = pickle.loads(payload, buffers=buffers)
    except BaseException as error:
        return False, _unloadable_arguments(error), []
    try:
        if not _numpy_allocator_checked:
            _share_numpy_arrays()
        for function, args_list, kwargs_list in groups:
            if kwargs_list is None:
                for args in args_list:
                    started += 1
                    status[slot] = started
                    append(function(*args))
            else:
                for args, kwargs in zip(args_list, kwargs_list, strict=True):
                    started += 1
                    status[slot] = started
                    append(function(*args, **kwargs))
    except BaseException as error:
        # raised by the task, they are its result, re-raised in the parent with the task named.
        return False, _raised(error, started - 1), []
    finally:
        _flush_output()
    try:
        body, out_of_band = dumps_result(results, threshold)
    except Exception:
        return False, _unpicklable_result(results), []
    return True, body, out_of_band


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


def _traceback_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _unloadable_arguments(error: BaseException) -> bytes:
    return _failures.dumps(
        _failures.ArgumentsUnloadable(type_name(error), str(error), _traceback_text(error))
    )


def _raised(error: BaseException, offset: int) -> bytes:
    rebuild, data = _exception_payload(error)
    return _failures.dumps(
        _failures.TaskRaised(
            offset, rebuild, data, type_name(error), str(error), _traceback_text(error)
        )
    )


def _exception_payload(error: BaseException) -> tuple[str | None, bytes | None]:
    """How the parent can rebuild ``error``: ("pickle", bytes), ("parts", bytes) or (None, None).

    An exception whose ``__init__`` takes other arguments than its ``args`` pickles but does not
    unpickle; for those, send its class, ``args`` and ``__dict__`` and rebuild without ``__init__``.
    """
    try:
        data = dumps_result(error)[0]
        pickle.loads(data)
        return "pickle", data
    except Exception:
        pass
    try:
        return "parts", dumps_result((type(error), error.args, dict(vars(error))))[0]
    except Exception:
        return None, None


def _unpicklable_result(results: list[Any]) -> bytes:
    for offset, value in enumerate(results):
        try:
            dumps_result(value)
        except Exception as error:
            return _failures.dumps(_failures.ResultUnpicklable(offset, type_name(value), str(error)))
    return _failures.dumps(
        _failures.ResultUnpicklable(0, "list", "the results could not be pickled together")
    )


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


if __name__ == "__main__":  # python -m ferrojob._worker (with the socket on fd 3)
    main()
