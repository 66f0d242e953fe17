"""The engine's two paths (Linux's fast path, the portable POSIX path) and the platforms ferrojob
refuses. The portable path is forced here with FERROJOB_PORTABLE=1 in a fresh interpreter; CI
also runs the whole suite on it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ferrojob._core
from conftest import KILLED_PARENT, assert_workers_died_with_their_parent


def run(source: str, portable: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FERROJOB_PORTABLE"}
    if portable:
        env["FERROJOB_PORTABLE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_engine_path_is_linux_by_default_and_portable_when_forced():
    source = "import ferrojob._core as core; print(core.ENGINE_PATH)"
    assert run(source, portable=False).stdout.split() == ["linux" if sys.platform == "linux" else "portable"]
    assert run(source, portable=True).stdout.split() == ["portable"]
    assert ferrojob._core.ENGINE_PATH == ("portable" if os.environ.get("FERROJOB_PORTABLE") == "1" else "linux")


SHARED_MEMORY_KINDS = """
    import numpy as np
    from ferrojob import Parallel, delayed

    def kinds(array):
        with open("/proc/self/maps") as maps:
            lines = [line for line in maps if "ferrojob-arguments" in line]
        lifeline = os.readlink("/proc/self/fd/5") if os.path.exists("/proc/self/fd/5") else "-"
        return (
            any("memfd:" in line for line in lines),
            any("/dev/shm/.ferrojob-arguments" in line and "(deleted)" in line for line in lines),
            lifeline.startswith("pipe:"),
            float(array.sum()),
        )

    import os
    array = np.ones(1_000_000)
    print(set(Parallel(n_jobs=2)(delayed(kinds)(array) for _ in range(4))))
"""


def test_the_portable_path_shares_unlinked_files_and_gives_workers_a_lifeline():
    done = run(SHARED_MEMORY_KINDS, portable=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{(False, True, True, 1000000.0)}"


def test_the_linux_path_shares_memfds_and_needs_no_lifeline():
    done = run(SHARED_MEMORY_KINDS, portable=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{(True, False, False, 1000000.0)}"


def test_portable_workers_die_with_a_killed_parent_through_their_lifeline():
    assert_workers_died_with_their_parent(run(KILLED_PARENT, portable=True))


def test_windows_is_refused_with_joblib_named_as_the_fallback():
    done = run(
        """
        import sys
        sys.platform = "win32"
        try:
            import ferrojob
        except ImportError as error:
            print(error)
        """,
        portable=False,
    )
    assert done.returncode == 0, done.stderr
    assert "does not support Windows" in done.stdout
    assert "pip install joblib" in done.stdout
