"""Crash and timeout reports: what the engine gathered about a lost job — how the worker ended,
its peak memory, the last bytes it wrote to stderr, which task was running — turned into the
error a user reads, with a ``likely_cause`` line.

Example of what a user sees::

    WorkerCrashedError: worker process 4242 was killed by signal SIGSEGV (11) while running
    task 3: crash(3).
      likely cause: a crash in native code (a C extension, ctypes); the stderr tail may show it
      peak memory: 41 MB
      stderr tail:
        Fatal Python error: Segmentation fault
        ...
"""

from __future__ import annotations

import linecache
import os
import re
import resource
import signal
import sys
import traceback
from typing import Any

from . import errors
from ._core import Completion, CompletionKind
from ._failures import CHANNEL_LOST_EXIT
from ._tasks import Batch, describe_arguments, function_name
from .errors import TaskCancelledError, WorkerCrashedError, WorkerStartError, compose_message

#: Lines of the stderr tail shown in a message (all of it is in ``stderr_tail``).
_TAIL_LINES = 12
_NATIVE_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def _tail_text(completion: Completion) -> str:
    return (completion.stderr_tail or b"").decode("utf-8", "replace")


def _signal_name(number: int | None) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(number)


def memory_limit() -> int | None:
    """The memory this process tree may use, in bytes: the tightest of the cgroup limit, the
    address-space limit and the machine's memory."""
    limits = []
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            text = file.read().strip()
        if text != "max":
            limits.append(int(text))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    return min(limits) if limits else None


def _megabytes(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e6:.0f} MB"


def likely_cause(completion: Completion, started: bool) -> str:
    """One line saying what most probably ended the worker."""
    tail = _tail_text(completion)
    kind, code = completion.kind, completion.code
    if "ferrojob: the initializer" in tail:
        failed = tail[tail.rfind("ferrojob: the initializer") :].splitlines()[0]
        return f"{failed[len('ferrojob: ') :].rstrip(':')}: {_last_line(tail)}"
    if not started and completion.jobs_done == 0 and "Traceback" in tail:
        return "the worker could not start: " + _last_line(tail)
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail.lower():
        return "probably out of memory: the stderr tail mentions it"
    if kind == CompletionKind.Signaled and code == signal.SIGKILL:
        limit, peak = memory_limit(), completion.peak_rss
        if limit is not None and peak is not None and peak >= 0.8 * limit:
            return (
                f"probably the out-of-memory killer: peak memory {_megabytes(peak)} is near the "
                f"limit of {_megabytes(limit)}"
            )
        return "killed by SIGKILL from outside: the out-of-memory killer, or another process"
    if kind == CompletionKind.Signaled and code in _NATIVE_CRASHES:
        return "a crash in native code (a C extension, ctypes); the stderr tail may show it"
    if kind == CompletionKind.Signaled:
        return f"the worker received {_signal_name(code)}, which ended it"
    if kind == CompletionKind.Exited and code == CHANNEL_LOST_EXIT:
        return "a task closed or replaced file descriptor 3, the worker's socket"
    if kind == CompletionKind.Exited:
        return f"the task ended its worker with os._exit({code}), or a C extension exited"
    if kind == CompletionKind.Protocol:
        return "a task (or a process it forked) wrote to file descriptor 3, the worker's socket"
    return "another part of the program reaped the worker (os.wait)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "see the stderr tail"


def _how(completion: Completion) -> str:
    kind = completion.kind
    if kind == CompletionKind.Exited and completion.code == CHANNEL_LOST_EXIT:
        return "lost its connection to the parent"
    if kind == CompletionKind.Exited:
        return f"exited with code {completion.code}"
    if kind == CompletionKind.Protocol:
        return f"broke ferrojob's worker protocol ({completion.reason}) and was killed"
    if kind == CompletionKind.Signaled:
        return f"was killed by signal {_signal_name(completion.code)}"
    return "disappeared"


def _shown_tail(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
    return ["stderr tail:", *("  " + line for line in lines)] if lines else []


def stuck_stack(tail: str) -> str:
    """The Python stack the worker's faulthandler dumped on SIGUSR1, or "unavailable"; under
    each frame, its source line (as Python's tracebacks show it), read here: the worker's files
    are this machine's."""
    marker = tail.rfind("(most recent call first):")
    if marker < 0:
        return "unavailable (the task did not answer the signal: stuck in native code?)"
    start = tail.rfind("\n", 0, marker) + 1
    return "\n".join(_with_source(line) for line in tail[start:].rstrip().splitlines())


_FRAME = re.compile(r'\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in ')


def _with_source(line: str) -> str:
    frame = _FRAME.match(line)
    if frame is None:
        return line
    return _frame_text(line, frame["file"], int(frame["line"]))


def _frame_text(line: str, filename: str, lineno: int) -> str:
    """A stack's frame ``line``, and under it the frame's source line, as tracebacks show it."""
    source = linecache.getline(filename, lineno).strip()
    return f"{line}\n    {source}" if source else line


def thread_stack(thread: int) -> str:
    """Where the thread ``thread`` (its ident) is now, in the shape faulthandler dumps a
    worker's stack (innermost frame first), each frame with its source line."""
    frame = sys._current_frames().get(thread)
    if frame is None:
        return "unavailable (the thread has finished)"
    frames = [
        _frame_text(
            f'  File "{each.f_code.co_filename}", line {lineno} in {each.f_code.co_name}',
            each.f_code.co_filename,
            lineno,
        )
        for each, lineno in traceback.walk_stack(frame)
    ]
    return "Stack (most recent call first):\n" + "\n".join(frames)


def thread_timeout_error(
    batch: Batch, offset: int, timeout: float, stack: str, *help_lines: str
) -> errors.TaskTimeoutError:
    """``TaskTimeoutError`` (FJ302) for a task of the threading backend that ran past
    ``timeout``: the same attributes as a process's (``task_index``, ``function``,
    ``args_repr``, ``timeout``, ``stack``); a thread has no pid nor stderr of its own."""
    function, args, kwargs = batch.calls[offset]
    error = errors.TaskTimeoutError(
        compose_message(
            f"{batch.describe(offset)} ran longer than timeout={timeout:g} s.",
            *help_lines,
            "where it was stuck:",
            *("  " + line for line in stack.splitlines()),
        ),
        code="FJ302",
    )
    error.task_index = batch.start + offset
    error.function = function_name(function)
    error.args_repr = _cut(describe_arguments(args, kwargs), 200)
    error.timeout = timeout
    error.stack = stack
    error.pid = None
    error.peak_rss = None
    error.stderr_tail = ""
    return error


class _Culprit:
    """The task a lost job was running, as the report names it."""

    def __init__(self, batch: Batch, completion: Completion) -> None:
        self.started = completion.tasks_started > 0
        offset = min(max(completion.tasks_started - 1, 0), len(batch) - 1)
        self.index = batch.start + offset
        function, args, kwargs = batch.calls[offset]
        self.function = function_name(function)
        self.args_repr = _cut(describe_arguments(args, kwargs), 200)
        self.where = (
            f"task {self.index}: {self.function}({self.args_repr})"
            if self.started
            else f"tasks {batch.start}..{batch.start + len(batch) - 1} (before the first one started)"
        )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attach(error: Any, culprit: _Culprit, completion: Completion) -> None:
    error.task_index = culprit.index
    error.function = culprit.function
    error.args_repr = culprit.args_repr
    error.peak_rss = completion.peak_rss
    error.stderr_tail = _tail_text(completion)
    error.pid = completion.pid


def crash_error(completion: Completion, batch: Batch, then: str) -> WorkerCrashedError:
    """``WorkerCrashedError`` (FJ301) for a worker that died, lost its socket or broke the
    protocol while running ``batch``; ``then`` says what happened to the rest of the call."""
    culprit = _Culprit(batch, completion)
    cause = likely_cause(completion, culprit.started)
    error = WorkerCrashedError(
        compose_message(
            f"worker process {completion.pid} {_how(completion)} while running {culprit.where}.",
            f"likely cause: {cause}",
            f"peak memory: {_megabytes(completion.peak_rss)}; {then}",
            *_shown_tail(_tail_text(completion)),
        ),
        code="FJ301",
    )
    _attach(error, culprit, completion)
    is_signal = completion.kind == CompletionKind.Signaled
    error.exitcode = None if is_signal else completion.code
    error.signal = completion.code if is_signal else None
    error.signal_name = _signal_name(completion.code).split(" ")[0] if is_signal else None
    error.likely_cause = cause
    return error


def timeout_error(
    completion: Completion, batch: Batch, timeout: float | None, then: str, setting: str
) -> errors.TaskTimeoutError:
    """``TaskTimeoutError`` (FJ302) for a task stopped by ``timeout=``, with where it was stuck;
    ``setting`` is where the limit is raised (``Parallel(timeout=...)``)."""
    culprit = _Culprit(batch, completion)
    stack = stuck_stack(_tail_text(completion))
    if completion.tasks_started == 0:
        # The clock of a task starts with the task: this job never started one, and was stopped
        # after the start-up allowance (the engine says which limit it enforced).
        allowance = completion.time_limit or 0.0
        doing = (
            "starting (running its initializer, or importing what the task needs)"
            if completion.jobs_done == 0
            else "loading the task's arguments (importing what they need)"
        )
        summary = (
            f"task {culprit.index}: {culprit.function}({culprit.args_repr}) never started: its worker "
            f"(pid {completion.pid}) was still {doing} after {allowance:g} s, and was stopped."
        )
        help_line = f"{then}; a timeout counts the task alone: find what hangs in the stack below"
    else:
        summary = (
            f"task {culprit.index}: {culprit.function}({culprit.args_repr}) ran longer than "
            f"timeout={timeout:g} s; its worker (pid {completion.pid}) was stopped."
        )
        help_line = f"{then}; raise {setting} or split the work into shorter tasks"
    error = errors.TaskTimeoutError(
        compose_message(summary, help_line, "where it was stuck:", *("  " + line for line in stack.splitlines())),
        code="FJ302",
    )
    _attach(error, culprit, completion)
    error.timeout = timeout
    error.stack = stack
    return error


def cancelled_error(completion: Completion, batch: Batch) -> TaskCancelledError:
    """``TaskCancelledError`` (FJ304) for a task withdrawn on request (``Executor.kill``): its
    worker was killed if it had started, else it never ran."""
    culprit = _Culprit(batch, completion)
    if completion.pid:
        how = f"its worker (pid {completion.pid}) was killed while running it"
    else:
        how = "it was withdrawn before it started"
    error = TaskCancelledError(
        compose_message(
            f"task {culprit.index}: {culprit.function}({culprit.args_repr}) was cancelled: {how}.",
            "it was killed on request (Executor.kill); its result will never exist",
        ),
        code="FJ304",
    )
    _attach(error, culprit, completion)
    error.pid = completion.pid or None
    return error


def start_error(completion: Completion, attempts: int) -> WorkerStartError:
    """``WorkerStartError`` (FJ303): workers die before running anything, ``attempts`` in a row."""
    tail = _tail_text(completion)
    error = WorkerStartError(
        compose_message(
            f"{attempts} worker processes in a row died before running a task (the last one {_how(completion)}).",
            f"likely cause: {likely_cause(completion, False)}",
            "check what every worker imports at start: sys.path, sitecustomize, the initializer",
            *_shown_tail(tail),
        ),
        code="FJ303",
    )
    error.stderr_tail = tail
    error.attempts = attempts
    return error
