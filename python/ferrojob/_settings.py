"""Every setting of a call, once: its name, where it can be set, which backends honour it, how
a given value is checked (and normalised), and what it means.

``Parallel``, ``parallel_config`` and ``Executor`` take their checks from this table, so a value
is refused with the same words wherever it is passed, and what reaches the engine is already
valid. ``SETTINGS`` is also what the documentation's table is made from (``describe``).

Example::

    >>> from ferrojob._settings import SETTINGS, check
    >>> check("timeout", 2)
    2.0
    >>> sorted(SETTINGS["timeout"].scopes)
    ['Executor', 'Parallel']
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backends import check_backend_name
from .cpus import check_n_jobs
from .errors import invalid_parameter as invalid

__all__ = ["SETTINGS", "Setting", "check", "check_given", "check_prefer_require", "describe"]

#: Where a setting can be given.
PARALLEL, CONFIG, EXECUTOR = "Parallel", "parallel_config", "Executor"
#: Which backends honour it ("every" backend, or some of these).
EVERY = frozenset({"processes", "threading", "sequential", "cluster"})
PROCESSES = frozenset({"processes"})
WORKERS = frozenset({"processes", "cluster"})
#: Buffers of at least this many bytes travel in shared memory unless ``max_nbytes`` says otherwise
#: (measured: below ~64 KiB, copying through the socket is as fast as placing in shared memory).
DEFAULT_MAX_NBYTES = 64 * 1024
#: The largest count the engine takes (an unsigned 63-bit integer everywhere).
_MAX_COUNT = sys.maxsize


@dataclass(frozen=True)
class Setting:
    """One setting: ``check`` turns a given value into the value used (or raises
    ``InvalidParameterError``); it never sees "not given"."""

    name: str
    check: Callable[[Any], Any]
    #: What it is when neither given nor set by ``parallel_config`` (signatures whose default is
    #: ``DEFAULT`` let the enclosing configuration decide, then this).
    default: Any
    scopes: frozenset[str]
    backends: frozenset[str]
    doc: str


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(value: Any, name: str, what: str, help_line: str, allow_none: bool = True) -> int | None:
    """A positive integer no larger than the engine takes (None where allowed)."""
    if value is None and allow_none:
        return None
    if _is_int(value) and 1 <= value <= _MAX_COUNT:
        return int(value)
    if _is_int(value) and value > _MAX_COUNT:
        raise invalid(f"{name}={value!r} is more {what} than a call can hold (at most {_MAX_COUNT}).", help_line)
    raise invalid(f"{name}={value!r} is not a number of {what}.", help_line)


# -- the checks, one per setting ----------------------------------------------------------------


def check_backend(backend: Any) -> Any:
    if backend is not None:
        check_backend_name(backend)
    return backend


RETURN_AS = ("list", "generator", "generator_unordered")


def check_return_as(value: Any) -> str:
    if value not in RETURN_AS:
        raise invalid(
            f"return_as={value!r} is not a way to return results.",
            'use return_as="list", "generator" or "generator_unordered"',
        )
    return str(value)


#: The formats ``dump`` writes.
DUMP_FORMATS = ("ferrojob", "joblib")


def check_dump_format(value: Any) -> str:
    if value not in DUMP_FORMATS:
        raise invalid(
            f"dump_format={value!r} is not a dump format.",
            "use 'ferrojob' (the default: compressed block by block on every core, memory-mapped "
            "in constant time) or 'joblib' (what plain joblib.load reads)",
        )
    return str(value)


#: The files a run report can be saved as, by suffix: which rendering each holds
#: (``RunReport.save``, ``parallel_config(report=...)``).
REPORT_FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".txt": "text"}


def check_report(value: Any) -> str | None:
    """``parallel_config(report=path)``: a file name whose suffix says the format (None: off)."""
    if value is None:
        return None
    try:
        path = os.fspath(value)
    except TypeError:
        path = None
    if not isinstance(path, str) or os.path.splitext(path)[1].lower() not in REPORT_FORMATS:
        raise invalid(
            f"report={value!r} is not a report file name.",
            "give a path ending in .html (the full report), .svg (the timeline) or .txt (the "
            'summary): parallel_config(report="run.html") writes run-001.html, run-002.html... '
            "one per call",
        )
    return path


def check_prefer(prefer: Any) -> Any:
    if prefer not in (None, "processes", "threads"):
        raise invalid(
            f"prefer={prefer!r} is not a valid preference.",
            'use prefer="processes", prefer="threads" or prefer=None',
        )
    return prefer


def check_require(require: Any) -> Any:
    if require not in (None, "sharedmem"):
        raise invalid(
            f"require={require!r} is not a valid requirement.",
            'use require="sharedmem" (tasks must share memory: threads) or require=None',
        )
    return require


def check_prefer_require(prefer: Any, require: Any) -> None:
    """The one rule between the two: processes share no memory."""
    if prefer == "processes" and require == "sharedmem":
        raise invalid(
            "prefer='processes' and require='sharedmem' are inconsistent settings: processes share no memory.",
            'drop prefer="processes" (require="sharedmem" runs tasks in threads)',
        )


def check_verbose(value: Any) -> int:
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise invalid(
            f"verbose={value!r} is not a level of detail.",
            "use verbose=0 (quiet), 10 (a line per batch) or 50 (to stdout)",
        )
    return int(float(value))


def check_timeout(value: Any) -> float | None:
    """A per-task time limit: None or a positive number of seconds (inf: no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise invalid(
            f"timeout={value!r} is not a positive number of seconds.",
            "use timeout=None (no limit) or a number of seconds such as timeout=10",
        )
    return None if math.isinf(value) else float(value)


_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
}


def evaluate_pre_dispatch(expression: str, n_jobs: int) -> int:
    """Evaluate joblib's ``pre_dispatch`` expression ("2 * n_jobs") without ``eval``."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "n_jobs":
            return n_jobs
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise ValueError(expression)

    try:
        return min(max(int(value(ast.parse(expression, mode="eval"))), 1), _MAX_COUNT)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError):
        raise invalid(
            f"pre_dispatch={expression!r} is not a number of batches.",
            'use an integer, "all", or an expression of n_jobs such as "2 * n_jobs"',
        ) from None


def check_pre_dispatch(value: Any) -> int | str:
    if isinstance(value, str):
        if value != "all":
            evaluate_pre_dispatch(value, 1)  # raises for a malformed expression
        return value
    return _count(
        value,
        "pre_dispatch",
        "batches",
        'use an integer, "all", or an expression of n_jobs such as "2 * n_jobs"',
        allow_none=False,
    )  # type: ignore[return-value]


def check_batch_size(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    return _count(  # type: ignore[return-value]
        value, "batch_size", "tasks", 'use batch_size="auto" (measured) or a positive integer', allow_none=False
    )


def check_max_batch_size(value: Any) -> int | None:
    return _count(
        value,
        "max_batch_size",
        "tasks",
        'use a positive integer: batch_size="auto" then never puts more tasks in a batch',
    )


def check_max_tasks_per_worker(value: Any) -> int | None:
    return _count(
        value,
        "max_tasks_per_worker",
        "tasks",
        "use a positive integer: each worker is replaced after that many tasks",
    )


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(value: Any, name: str) -> int | None:
    """A size as joblib spells ``max_nbytes``: bytes as an int, or a string such as "1M", "100K"
    or "2GB"; None: no size (never / no limit). ``name`` is the parameter, for the error."""
    if value is None:
        return None
    size: int | None = None
    if _is_int(value) and value >= 0:
        size = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", value.upper())
        if match:
            size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size is None or size > _MAX_COUNT:
        raise invalid(
            f"{name}={value!r} is not a size.",
            'use a number of bytes, a string such as "1M", "100K" or "2GB", or None'
            + (
                " to send every argument inside the message (no shared memory)"
                if name == "max_nbytes"
                else " (no limit)"
            ),
        )
    return size


MMAP_MODES = ("r", "r+", "w+", "c")


def validate_mmap_mode(mode: Any, meaning_of_none: str) -> str | None:
    """``mode`` if it is numpy's mapping mode or None, else ``InvalidParameterError`` (FJ201)
    saying what None means where it is used."""
    if mode is None or mode in MMAP_MODES:
        return mode  # type: ignore[no-any-return]
    raise invalid(
        f"mmap_mode={mode!r} is not a mapping mode.",
        "use 'r' (read-only), 'r+' or 'w+' (writable, shared), 'c' (writable copy-on-write,",
        f"private), or None ({meaning_of_none})",
    )


def check_mmap_mode(mode: Any) -> str:
    """The mapping mode of arguments in workers; None (joblib: no memmapping) is a private copy."""
    return validate_mmap_mode(mode, "a private copy for each task, as 'c'") or "c"


def check_return_exceptions(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(
            f"return_exceptions={value!r} is not a bool.",
            "use return_exceptions=True to collect each failed task's exception in its result slot",
        )
    return value


def check_initializer(initializer: Any) -> Any:
    if not (initializer is None or callable(initializer)):
        raise invalid(
            f"initializer={initializer!r} is not callable.",
            "pass a function, run once in each worker before its first task: initializer=setup",
        )
    return initializer


def check_initargs(initargs: Any) -> tuple:
    if not isinstance(initargs, (tuple, list)):
        raise invalid(
            f"initargs={initargs!r} is not a tuple of arguments.",
            "pass the initializer's arguments as a tuple: initargs=(path,)",
        )
    return tuple(initargs)


def check_inner_max_num_threads(value: Any) -> int | None:
    return _count(
        value,
        "inner_max_num_threads",
        "threads",
        "use a positive integer: BLAS/OpenMP threads allowed in each worker",
    )


def check_max_workers(value: Any) -> int | None:
    return _count(
        value,
        "max_workers",
        "worker processes",
        "use a positive integer, or None for one worker per CPU",
    )


def _accepted(value: Any) -> Any:
    return value


def _size_check(name: str) -> Callable[[Any], int | None]:
    return lambda value: parse_size(value, name)


_ALL = frozenset({PARALLEL, CONFIG, EXECUTOR})
_CALLS = frozenset({PARALLEL, CONFIG})

SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        Setting("n_jobs", check_n_jobs, None, _CALLS, EVERY, "workers: -1 all CPUs, None the default, 1 in this process"),
        Setting("max_workers", check_max_workers, None, frozenset({EXECUTOR}), PROCESSES, "worker processes"),
        Setting("backend", check_backend, "loky", _CALLS, EVERY, "where tasks run: loky, threading, sequential, dask, ray"),
        Setting("return_as", check_return_as, "list", frozenset({PARALLEL}), EVERY, "list, generator, generator_unordered"),
        Setting("prefer", check_prefer, None, _CALLS, EVERY, "a soft hint: processes or threads"),
        Setting("require", check_require, None, _CALLS, EVERY, "sharedmem: tasks must share memory (threads)"),
        Setting("verbose", check_verbose, 0, _CALLS, EVERY, "progress lines on stderr (10: per batch)"),
        Setting("timeout", check_timeout, None, frozenset({PARALLEL, EXECUTOR}), EVERY, "seconds one task may run"),
        Setting("pre_dispatch", check_pre_dispatch, "2 * n_jobs", frozenset({PARALLEL}), EVERY, "batches dispatched ahead"),
        Setting("batch_size", check_batch_size, "auto", frozenset({PARALLEL}), EVERY, "tasks per batch, or auto"),
        Setting("max_batch_size", check_max_batch_size, None, frozenset({PARALLEL}), EVERY, "largest automatic batch"),
        Setting("temp_folder", _accepted, None, _CALLS, frozenset(), "accepted for joblib; nothing is written to disk"),
        Setting("max_nbytes", _size_check("max_nbytes"), DEFAULT_MAX_NBYTES, _ALL, WORKERS, "buffers this large use shared memory"),
        Setting("mmap_mode", check_mmap_mode, "r", _ALL, WORKERS, "how workers map shared arguments: r, r+, w+, c"),
        Setting("inner_max_num_threads", check_inner_max_num_threads, None, frozenset({CONFIG}), WORKERS, "BLAS threads"),
        Setting("return_exceptions", check_return_exceptions, False, _CALLS, EVERY, "failed tasks' errors as results"),
        Setting("initializer", check_initializer, None, _ALL, PROCESSES, "run once in each worker before its tasks"),
        Setting("initargs", check_initargs, (), _ALL, PROCESSES, "the initializer's arguments"),
        Setting("max_tasks_per_worker", check_max_tasks_per_worker, None, frozenset({PARALLEL, EXECUTOR}), PROCESSES,
                "a worker is replaced after this many tasks"),
        Setting("max_worker_memory", _size_check("max_worker_memory"), None, frozenset({PARALLEL, EXECUTOR}), PROCESSES,
                "a worker over this resident memory is replaced"),
        Setting("progress", _accepted, False, frozenset({PARALLEL}), EVERY, "True: a tqdm bar; a callable: updates"),
        Setting("report", check_report, None, frozenset({CONFIG}), EVERY, "write every call's run report: run.html -> run-001.html..."),
        Setting("dump_format", check_dump_format, "ferrojob", frozenset({CONFIG}), frozenset(), "dump's format: ferrojob, joblib"),
    )
}  # fmt: skip


def check(name: str, value: Any) -> Any:
    """The value a given setting runs with (``InvalidParameterError`` if it means nothing)."""
    return SETTINGS[name].check(value)


def check_given(scope: str, is_given: Callable[[Any], bool], **values: Any) -> dict[str, Any]:
    """Check every value ``is_given`` accepts (the others keep their marker) for ``scope``;
    returns the values to use, and checks the rules between settings."""
    checked = {}
    for name, value in values.items():
        setting = SETTINGS[name]
        if scope not in setting.scopes:
            raise TypeError(f"{name} is not a setting of {scope}")
        checked[name] = setting.check(value) if is_given(value) else value
    check_prefer_require(checked.get("prefer"), checked.get("require"))
    return checked


def describe(scope: str) -> list[tuple[str, str, str]]:
    """``(name, backends, meaning)`` of every setting of ``scope``, for documentation."""
    rows = []
    for setting in SETTINGS.values():
        if scope in setting.scopes:
            backends = "all" if setting.backends == EVERY else ", ".join(sorted(setting.backends)) or "none"
            rows.append((setting.name, backends, setting.doc))
    return rows
