"""Diagnosis of what users pass to ``Parallel`` and ``delayed`` by mistake.

joblib answers these with ``'function' object is not iterable`` or ``cannot unpack non-iterable
int object``; here each gets a message that names the object and shows the corrected call.
The texts are pinned by tests (tests/test_misuse.py): change them there too.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeGuard

from ._core import DelayedFunction
from ._tasks import describe_call, function_name
from .errors import ParallelUsageError, compose_message

_name = function_name


def _describe_value(value: Any) -> str:
    """``the int 2``, ``the str 'a'``, ``a list of 3 items``."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = type(value).__name__
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {kind} of {len(value)} items {text}"
    return f"the {kind} {text}"


def _is_function(value: Any) -> bool:
    return callable(value) and not isinstance(value, (type, DelayedFunction))


def _example(parallel: str, function: str, variable: str = "x") -> str:
    return f"{parallel}(delayed({function})({variable}) for {variable} in data)"


def _guess_generator_call(iterable: Any) -> tuple[str | None, str]:
    """For ``(f(x) for x in data)``: the name of the function called inside, and the loop variable.

    Reads the generator expression's code: the globals and closure names it uses, resolved in its
    frame, and keeps the first one that is a user function.
    """
    from inspect import isroutine

    code = getattr(iterable, "gi_code", None)
    frame = getattr(iterable, "gi_frame", None)
    if code is None or frame is None:
        return None, "x"
    variable = next((v for v in code.co_varnames if not v.startswith(".")), "x")
    for name in (*code.co_names, *code.co_freevars):
        value = frame.f_locals.get(name, frame.f_globals.get(name))
        if value is None or getattr(builtins, name, None) is value:
            continue
        if isroutine(value) or isinstance(value, DelayedFunction):
            return name, variable
    return None, variable


def not_an_iterable(parallel: str, value: Any) -> ParallelUsageError:
    if isinstance(value, DelayedFunction):
        return delayed_not_called(parallel, value, None)
    if _is_function(value):
        name = _name(value)
        return ParallelUsageError(
            compose_message(
                f"Parallel(...) expects an iterable of delayed calls, but got the function {name!r}.",
                "wrap the function and iterate over your data:",
                _example(parallel, name),
            ),
            code="FJ001",
        )
    return ParallelUsageError(
        compose_message(
            f"Parallel(...) expects an iterable of delayed calls, but got {_describe_value(value)}, "
            "which is not iterable.",
            "pass a generator or a list of delayed calls:",
            _example(parallel, "your_function"),
        ),
        code="FJ001",
    )


def single_call(parallel: str, call: tuple) -> ParallelUsageError:
    return ParallelUsageError(
        compose_message(
            "Parallel(...) expects an iterable of delayed calls, but got a single call: "
            f"delayed({describe_call(call)}).",
            "put it in a list, or make one call per item of your data:",
            f"{parallel}([delayed({_name(call[0])})(...)])",
        ),
        code="FJ006",
    )


def delayed_not_called(parallel: str, value: Any, index: int | None) -> ParallelUsageError:
    name = _name(value.function)
    where = "" if index is None else f"item {index} of the iterable is {value!r} without arguments: "
    return ParallelUsageError(
        compose_message(
            f"{where}delayed({name}) must be called with the arguments: delayed({name})(x).",
            "call it inside the generator:",
            _example(parallel, name),
        ),
        code="FJ003",
    )


def not_a_call(parallel: str, iterable: Any, item: Any, index: int) -> ParallelUsageError:
    """Item ``index`` of the iterable is not a delayed call: find out what it is and say so."""
    if isinstance(item, DelayedFunction):
        return delayed_not_called(parallel, item, index)
    if _is_function(item):
        name = _name(item)
        return ParallelUsageError(
            compose_message(
                f"Parallel(...) expects delayed calls, but item {index} of the iterable is the "
                f"function {name!r} itself.",
                "say what to call it with:",
                _example(parallel, name),
            ),
            code="FJ004",
        )
    function, variable = _guess_generator_call(iterable)
    if function is not None:
        summary = (
            f"Parallel(...) expects delayed calls, but item {index} of the iterable is "
            f"{_describe_value(item)}: {function}({variable}) ran right away, in this process. "
            "Did you forget delayed()?"
        )
    else:
        summary = (
            f"Parallel(...) expects delayed calls, but item {index} of the iterable is "
            f"{_describe_value(item)}. Did you forget delayed()?"
        )
    return ParallelUsageError(
        compose_message(
            summary,
            "wrap the function with delayed, so that the call runs in a worker:",
            _example(parallel, function or "your_function", variable),
        ),
        code="FJ002",
    )


def coerce_call(parallel: str, iterable: Any, item: Any, index: int) -> tuple:
    """Accept a call written by hand as any ``(function, args, kwargs)`` triple; else raise."""
    if isinstance(item, (tuple, list)) and len(item) == 3:
        function, args, kwargs = item
        if callable(function) and isinstance(args, (tuple, list)) and isinstance(kwargs, Mapping):
            return (function, tuple(args), dict(kwargs))
    raise not_a_call(parallel, iterable, item, index)


def looks_like_one_call(value: Any) -> TypeGuard[tuple]:
    return (
        type(value) is tuple
        and len(value) == 3
        and callable(value[0])
        and type(value[1]) is tuple
        and type(value[2]) is dict
    )


def not_callable(value: Any) -> ParallelUsageError:
    return ParallelUsageError(
        compose_message(
            f"delayed(...) expects a function, but got {_describe_value(value)}, which is not callable.",
            "pass the function itself, then call the result with the arguments:",
            "delayed(my_function)(x)",
        ),
        code="FJ005",
    )


def not_callable_task(value: Any, method: str) -> ParallelUsageError:
    """``executor.submit(f(x))``: the task's result was passed instead of the function."""
    return ParallelUsageError(
        compose_message(
            f"{method} expects a function, but got {_describe_value(value)}, which is not callable.",
            "pass the function and its arguments separately, without calling it:",
            f"{method.replace('Executor', 'executor')}(my_function, x)",
        ),
        code="FJ005",
    )


def not_iterable_argument(value: Any, position: int, method: str) -> ParallelUsageError:
    """``executor.map(f, 5)``: an argument after the function is not iterable."""
    return ParallelUsageError(
        compose_message(
            f"{method} expects iterables after the function, but argument {position} is "
            f"{_describe_value(value)}, which is not iterable.",
            "pass one iterable per parameter of the function:",
            f"{method.replace('Executor', 'executor')}(my_function, xs, ys)",
        ),
        code="FJ005",
    )
