"""Shared helpers: looking at this process's children and file descriptors through /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def children(pid: int | None = None) -> set[int]:
    """Live child processes of ``pid`` (default: this process)."""
    pid = pid or os.getpid()
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def worker_children() -> set[int]:
    """Live children of this process that are ferrojob workers (not dask's, ray's...)."""
    workers = set()
    for pid in children():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ferrojob._worker" in command:
            workers.add(pid)
    return workers


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` ("Z" for a zombie), or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return None


def is_shared_memory(name: str, kind: str = "") -> bool:
    """Whether a /proc maps line or fd link names ferrojob shared memory (of ``kind``, e.g.
    "arguments"): a memfd on the Linux path, an unlinked file in /dev/shm on the portable one."""
    label = f"ferrojob-{kind}" if kind else "ferrojob"
    return f"memfd:{label}" in name or f"/dev/shm/.{label}" in name


PORTABLE = os.environ.get("FERROJOB_PORTABLE") == "1"


#: A script whose workers outlive it unless they die with their parent: it prints their pids,
#: then kills itself with SIGKILL (no cleanup of its own runs).
KILLED_PARENT = """
import os, signal
from ferrojob import Parallel, delayed

def pid(_):
    return os.getpid()

pids = sorted(set(Parallel(n_jobs=2)(delayed(pid)(x) for x in range(40))))
print(" ".join(map(str, pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def assert_workers_died_with_their_parent(done: subprocess.CompletedProcess) -> None:
    """``done`` ran ``KILLED_PARENT``: its workers must be gone (waiting for them is no timing
    assertion: the bound only keeps a failure from hanging)."""
    import signal
    import time

    assert done.returncode == -signal.SIGKILL
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + 30
    while any(process_state(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_state(p) in (None, "Z") for p in pids)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_script(tmp_path: Path, source: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``source`` as a ``__main__`` script in a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


@pytest.fixture
def script(tmp_path):
    def run(source: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_script(tmp_path, source, timeout)

    return run


@pytest.fixture(autouse=True)
def pool_is_released():
    """After every test, no call still holds the warm process pool (a leaked session would)."""
    yield
    from ferrojob.backends import processes

    assert not processes._SHARED.lock.locked(), "a call left the shared process pool checked out"
