"""Every misuse gets an error that names what was passed and shows the corrected call.

The full texts are pinned here on purpose: they are the product.
"""

from __future__ import annotations

import pickle
import threading

import pytest
from ferrojob import (
    InvalidParameterError,
    Parallel,
    ParallelUsageError,
    UnknownBackendError,
    UnpicklableError,
    delayed,
    parallel_config,
)


def my_function(x):
    return 2 * x


data = [1, 2, 3]


def test_function_instead_of_an_iterable():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(my_function)
    assert isinstance(info.value, ParallelUsageError)
    assert info.value.code == "FJ001"
    assert str(info.value) == (
        "Parallel(...) expects an iterable of delayed calls, but got the function 'my_function'.\n"
        "  help: wrap the function and iterate over your data:\n"
        "        Parallel(n_jobs=2)(delayed(my_function)(x) for x in data)"
    )


def test_non_iterable_value():
    with pytest.raises(ParallelUsageError, match=r"but got the int 5, which is not iterable"):
        Parallel(n_jobs=2)(5)


def test_forgot_delayed_names_the_value_and_the_function():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(my_function(x) for x in data)
    assert info.value.code == "FJ002"
    assert str(info.value) == (
        "Parallel(...) expects delayed calls, but item 0 of the iterable is the int 2: "
        "my_function(x) ran right away, in this process. Did you forget delayed()?\n"
        "  help: wrap the function with delayed, so that the call runs in a worker:\n"
        "        Parallel(n_jobs=2)(delayed(my_function)(x) for x in data)"
    )


def test_forgot_delayed_with_a_list_result_and_another_loop_variable():
    def pair(item):
        return [item, item]

    with pytest.raises(ParallelUsageError) as info:
        Parallel(n_jobs=2)(pair(item) for item in "ab")
    message = str(info.value)
    assert "item 0 of the iterable is a list of 2 items ['a', 'a']: pair(item) ran right away" in message
    assert "Parallel(n_jobs=2)(delayed(pair)(item) for item in data)" in message


def test_forgot_delayed_in_a_list():
    with pytest.raises(ParallelUsageError, match=r"item 0 of the iterable is the int 2\. Did you forget delayed"):
        Parallel(n_jobs=2)([2, 4])


def test_bad_item_later_in_the_iterable_is_reported_with_its_index():
    calls = [delayed(my_function)(1), delayed(my_function)(2), "oops"]
    with pytest.raises(ParallelUsageError, match=r"item 2 of the iterable is the str 'oops'"):
        Parallel(n_jobs=2)(calls)


def test_delayed_not_called():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(delayed(my_function) for x in data)
    assert info.value.code == "FJ003"
    assert str(info.value) == (
        "item 0 of the iterable is delayed(my_function) without arguments: "
        "delayed(my_function) must be called with the arguments: delayed(my_function)(x).\n"
        "  help: call it inside the generator:\n"
        "        Parallel(n_jobs=2)(delayed(my_function)(x) for x in data)"
    )


def test_delayed_function_passed_directly():
    with pytest.raises(ParallelUsageError, match=r"delayed\(my_function\) must be called with the arguments"):
        Parallel(n_jobs=2)(delayed(my_function))


def test_iterable_of_functions():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)([my_function, my_function])
    assert info.value.code == "FJ004"
    assert str(info.value) == (
        "Parallel(...) expects delayed calls, but item 0 of the iterable is the function "
        "'my_function' itself.\n"
        "  help: say what to call it with:\n"
        "        Parallel(n_jobs=2)(delayed(my_function)(x) for x in data)"
    )


def test_delayed_of_a_non_callable():
    with pytest.raises(TypeError) as info:
        delayed(3)
    assert info.value.code == "FJ005"
    assert str(info.value) == (
        "delayed(...) expects a function, but got the int 3, which is not callable.\n"
        "  help: pass the function itself, then call the result with the arguments:\n"
        "        delayed(my_function)(x)"
    )


def test_single_delayed_call():
    with pytest.raises(ParallelUsageError, match=r"got a single call: delayed\(my_function\(3\)\)") as info:
        Parallel(n_jobs=2)(delayed(my_function)(3))
    assert info.value.code == "FJ006"


def test_misuse_is_reported_the_same_way_by_every_backend():
    for backend in ("threading", "sequential", "loky"):
        with pytest.raises(ParallelUsageError, match="Did you forget delayed"):
            Parallel(n_jobs=2, backend=backend)(my_function(x) for x in data)


# -- parameters ---------------------------------------------------------------------------------


def test_n_jobs_zero():
    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=0)
    assert isinstance(info.value, InvalidParameterError)
    assert str(info.value) == (
        "n_jobs == 0 in Parallel has no meaning: it is not a number of workers.\n"
        "  help: use n_jobs=1 to run in this process, n_jobs=2 (or more) for that many workers,\n"
        "        n_jobs=-1 for all CPUs, or n_jobs=None for the default (1, or parallel_config's)"
    )


def test_a_fractional_n_jobs_is_truncated_as_joblib_does():
    from ferrojob import cpu_count

    assert Parallel(n_jobs=2.3).n_jobs == 2
    assert Parallel(n_jobs=cpu_count() * 0.75)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=0.5)
    with pytest.raises(ValueError, match=r"n_jobs could not be converted to int: it must be an integer or None"):
        Parallel(n_jobs=float("nan"))


@pytest.mark.parametrize("n_jobs", ["two", True, [2]])
def test_n_jobs_of_the_wrong_type(n_jobs):
    with pytest.raises(ValueError, match=r"n_jobs could not be converted to int: it must be an integer or None"):
        Parallel(n_jobs=n_jobs)


@pytest.mark.parametrize("n_jobs", [2.0, "2", " 2 "])
def test_n_jobs_is_converted_like_joblib_converts_it(n_jobs):
    parallel = Parallel(n_jobs=n_jobs)
    assert parallel.n_jobs == 2
    assert parallel(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_unknown_backend_lists_the_valid_names():
    with pytest.raises(ValueError) as info:
        Parallel(backend="lokyy")
    assert isinstance(info.value, UnknownBackendError)
    message = str(info.value)
    assert message.startswith("unknown backend 'lokyy'.")
    assert "did you mean 'loky'?" in message
    for name in ("'loky'", "'multiprocessing'", "'processes'", "'sequential'", "'threading'"):
        assert name in message


def test_unknown_backend_in_parallel_config():
    with pytest.raises(UnknownBackendError):
        with parallel_config(backend="nope"):
            pass


@pytest.mark.parametrize(
    "keyword, value, fragment",
    [
        ("return_as", "tuple", "is not a way to return results"),
        ("prefer", "gpus", "is not a valid preference"),
        ("require", "magic", "is not a valid requirement"),
        ("timeout", -1, "is not a positive number of seconds"),
        ("batch_size", 0, "is not a number of tasks"),
        ("pre_dispatch", "n_jobs +", "is not a number of batches"),
    ],
)
def test_invalid_parameters(keyword, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        parallel = Parallel(n_jobs=2, **{keyword: value})
        parallel(delayed(my_function)(x) for x in data)


def test_sharedmem_with_a_process_backend():
    for backend in ("loky", "multiprocessing"):
        with pytest.raises(ValueError, match=r"cannot share memory"):
            Parallel(n_jobs=2, backend=backend, require="sharedmem")  # at once, as in joblib


# -- what cannot cross a process boundary -------------------------------------------------------


def uses_lock(lock, x):
    return x


def test_lock_argument_names_the_argument_and_suggests_threads():
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(delayed(uses_lock)(lock, x) for x in data)
    error = info.value
    assert isinstance(error, UnpicklableError) and isinstance(error, pickle.PicklingError)
    assert error.code == "FJ101"
    message = str(error)
    assert message.startswith("cannot send argument 0 of task 0: uses_lock(")
    assert "an object of type '_thread.lock' cannot be pickled" in message
    assert 'use backend="threading"' in message
    assert "create the lock inside the function" in message


def test_keyword_argument_is_named():
    with pytest.raises(UnpicklableError, match=r"cannot send keyword argument 'lock' of task 0"):
        Parallel(n_jobs=2)(delayed(uses_lock)(x=1, lock=threading.Lock()) for _ in range(1))


def test_open_file_argument(tmp_path):
    with open(tmp_path / "out.txt", "w") as handle:
        with pytest.raises(UnpicklableError) as info:
            Parallel(n_jobs=2)([delayed(uses_lock)(handle, 1)])
    message = str(info.value)
    assert "TextIOWrapper" in message
    assert "pass the file's name and open it inside the function" in message


def test_generator_argument():
    with pytest.raises(UnpicklableError) as info:
        Parallel(n_jobs=2)([delayed(uses_lock)((i for i in range(3)), 1)])
    assert "generator" in str(info.value)
    assert "list(...)" in str(info.value)


def test_unpicklable_argument_in_a_later_task_names_that_task():
    calls = [delayed(uses_lock)(None, 0), delayed(uses_lock)(None, 1), delayed(uses_lock)(threading.RLock(), 2)]
    with pytest.raises(UnpicklableError, match=r"argument 0 of task 2"):
        Parallel(n_jobs=2, batch_size=1)(calls)


def lock_for_two(x):
    return threading.Lock() if x == 2 else x


def test_unpicklable_result_names_the_task():
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(delayed(lock_for_two)(x) for x in range(3))
    assert info.value.code == "FJ102"
    message = str(info.value)
    assert message.startswith("the result of task 2: lock_for_two(2) cannot be sent back from its worker process")
    assert "return plain data" in message


def test_lock_argument_works_with_threads():
    lock = threading.Lock()
    assert Parallel(n_jobs=2, backend="threading")(delayed(uses_lock)(lock, x) for x in data) == data


def test_pool_is_usable_after_a_misuse():
    with pytest.raises(ParallelUsageError):
        Parallel(n_jobs=2)([delayed(my_function)(1), 2])
    assert Parallel(n_jobs=2)(delayed(my_function)(x) for x in data) == [2, 4, 6]


def test_misuse_tracebacks_end_at_the_callers_line():
    import traceback

    with pytest.raises(ParallelUsageError) as info:
        Parallel(n_jobs=2)(my_function(x) for x in data)
    frames = traceback.extract_tb(info.value.__traceback__)
    internal = ("ferrojob/_misuse.py", "ferrojob/_tasks.py")
    assert not any(frame.filename.endswith(internal) for frame in frames)
    assert info.value.__cause__ is None and info.value.__suppress_context__
