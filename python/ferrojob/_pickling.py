"""Pickling across the process boundary, and the errors that explain why something can't cross.

Functions and arguments go out with cloudpickle (lambdas, closures and ``__main__`` functions by
value, importable functions by reference), protocol 5. A batch of importable functions and plain
scalar arguments — what cloudpickle would write by reference anyway — is written by the C pickler
alone (``dumps_plain``), several times faster. Results come back with plain pickle, and
cloudpickle only when plain pickle refuses (a result holding a lambda, a local class).
"""

from __future__ import annotations

import io
import pickle
import types
import weakref
from collections.abc import Callable
from typing import Any

from .errors import UnpicklableError, compose_message

PROTOCOL = 5


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for another process (cloudpickle, protocol 5), every buffer in-band."""
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=PROTOCOL)


#: Python functions cloudpickle sends by reference (importable, at module level), by function.
_BY_REFERENCE: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()


def pickles_by_reference(function: Any) -> bool:
    """Whether cloudpickle would send ``function`` as a reference to its importable name (so the
    C pickler writes the same bytes): a module-level Python function not in ``__main__``, or a
    builtin function of a module (``abs``, ``math.sqrt``). Cached per function."""
    kind = type(function)
    if kind is types.BuiltinFunctionType:
        return isinstance(function.__self__, types.ModuleType)
    if kind is not types.FunctionType:
        return False
    known = _BY_REFERENCE.get(function)
    if known is None:
        from cloudpickle import cloudpickle as implementation

        try:
            known = bool(implementation._should_pickle_by_reference(function))
        except Exception:  # a cloudpickle without this check: always use cloudpickle
            known = False
        _BY_REFERENCE[function] = known
    return known


def dumps_plain(obj: Any) -> bytes | None:
    """``obj`` (made only of what ``pickles_by_reference`` accepts and plain scalars) pickled by the
    C pickler; None when cloudpickle must decide after all (a module registered to be pickled by
    value, a function rebound under its name since)."""
    import cloudpickle

    if cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES:
        return None
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def _collector(threshold: int | None) -> tuple[list[pickle.PickleBuffer], Callable[[Any], bool] | None]:
    """A ``buffer_callback`` that takes buffers of ``threshold`` bytes or more out of band."""
    out_of_band: list[pickle.PickleBuffer] = []
    if threshold is None:
        return out_of_band, None

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        if memoryview(buffer).nbytes >= threshold:
            out_of_band.append(buffer)
            return False
        return True

    return out_of_band, keep_in_band


def dumps_with_buffers(obj: Any, threshold: int | None) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Like ``dumps``, but buffers of ``threshold`` bytes or more (numpy arrays, bytearrays...)
    are returned beside the pickle instead of copied into it. ``threshold=None``: none are."""
    import cloudpickle

    buffers, callback = _collector(threshold)
    return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback), buffers


def dumps_result(obj: Any, threshold: int | None = None) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle a worker's results: plain pickle first (fast, no import), cloudpickle if needed."""
    buffers, callback = _collector(threshold)
    try:
        return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback), buffers
    except Exception:
        return dumps_with_buffers(obj, threshold)


def pickling_failure(obj: Any) -> BaseException | None:
    """The error pickling ``obj`` raises, or None if it pickles."""
    try:
        dumps(obj)
    except Exception as error:
        return error
    return None


def type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _fix_for(obj: Any) -> tuple[str, ...]:
    """The most likely fix for an object that cannot be pickled, by what it is."""
    threading_hint = 'use backend="threading": threads share memory, nothing is pickled'
    if _is_lock(obj):
        return (threading_hint, "or create the lock inside the function, one per worker process")
    if isinstance(obj, io.IOBase):
        return ("pass the file's name and open it inside the function", f"or {threading_hint}")
    if isinstance(obj, (types.GeneratorType, types.AsyncGeneratorType)):
        return ("pass a list instead (list(...)), or the data the generator is made from", f"or {threading_hint}")
    return ("make the object picklable, or create it inside the function", f"or {threading_hint}")


def _is_lock(obj: Any) -> bool:
    import threading

    lock_types = (type(threading.Lock()), type(threading.RLock()))
    return isinstance(obj, lock_types) or type(obj).__name__ in {"Condition", "Semaphore", "Event"}


def unpicklable_argument(function: Callable[..., Any], args: tuple, kwargs: dict, task: str) -> UnpicklableError | None:
    """Find the argument of one call that cannot be pickled and explain it; None if all pickle."""
    name = getattr(function, "__qualname__", repr(function))
    error = pickling_failure(function)
    if error is not None:
        return UnpicklableError(
            compose_message(
                f"cannot send the function {name!r} of {task} to a worker process: "
                f"a {type_name(function)} cannot be pickled ({error})",
                'define it at module level, or use backend="threading"',
            ),
            code="FJ101",
        )
    places = [(f"argument {i}", value) for i, value in enumerate(args)]
    places += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for place, value in places:
        error = pickling_failure(value)
        if error is not None:
            return UnpicklableError(
                compose_message(
                    f"cannot send {place} of {task} to a worker process: "
                    f"an object of type {type_name(value)!r} cannot be pickled ({error})",
                    *_fix_for(value),
                ),
                code="FJ101",
            )
    return None


def unpicklable_result(result_type: str, task: str, reason: str) -> UnpicklableError:
    """Explain why a task's result (of type ``result_type``) could not come back from its worker."""
    return UnpicklableError(
        compose_message(
            f"the result of {task} cannot be sent back from its worker process: "
            f"an object of type {result_type!r} cannot be pickled ({reason})",
            "return plain data (numbers, strings, lists, dicts, arrays) from the function",
            'or use backend="threading": threads share memory, nothing is pickled',
        ),
        code="FJ102",
    )


def wrap_non_picklable_objects(obj: Any, keep_wrapper: bool = True) -> Any:
    """joblib's decorator for functions pickled by value. ferrojob already sends lambdas, closures
    and ``__main__`` functions with cloudpickle, so this returns ``obj`` itself.

    Example::

        >>> from ferrojob import wrap_non_picklable_objects
        >>> square = wrap_non_picklable_objects(lambda x: x * x)
        >>> square(3)
        9
    """
    return obj
