"""Memory at its boundaries: functions that look alike, odd names, caches cleared under running
calls, and cache folders nobody may write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from ferrojob import Memory

np = pytest.importorskip("numpy")


def in_module(module_name: str, qualname: str, func):
    """``func`` as if defined in ``module_name`` under ``qualname``."""
    func.__module__ = module_name
    func.__qualname__ = qualname
    return func


def test_functions_that_look_alike_never_share_results(tmp_path):
    memory = Memory(tmp_path)
    first, second = (lambda x: ("first", x)), (lambda x: ("second", x))
    assert memory.cache(first)(1) == ("first", 1)
    assert memory.cache(second)(1) == ("second", 1)

    def ident(tag):
        return lambda x: (tag, x)

    lookalikes = [
        in_module("pkg", "stats.mean", ident("pkg + stats.mean")),
        in_module("pkg.stats", "mean", ident("pkg.stats + mean")),
        in_module("m", "café", ident("café")),
        in_module("m", "cafè", ident("cafè")),
    ]
    for func in lookalikes:
        expected = func(1)
        assert memory.cache(func)(1) == expected
        assert memory.cache(func)(1) == expected  # and again from the cache
    folders = os.listdir(os.path.join(tmp_path, "ferrojob"))
    assert len(folders) == 6


def test_odd_names_make_visible_short_folders_that_clear_and_evict(tmp_path):
    memory = Memory(tmp_path)
    hidden = in_module(".hidden", ".dot", lambda x: x + 1)
    long = in_module("m", "x" * 400, lambda x: x + 2)
    for func, expected in ((hidden, 2), (long, 3)):
        cached = memory.cache(func)
        assert cached(1) == expected
        assert cached.check_call_in_cache(1)
    folders = os.listdir(os.path.join(tmp_path, "ferrojob"))
    assert all(not name.startswith(".") and len(name.encode()) < 255 for name in folders)
    assert len(memory.store.entries()) == 2
    memory.reduce_size(items_limit=1)
    assert len(memory.store.entries()) == 1
    memory.clear()
    assert memory.store.entries() == []


CLEARING = textwrap.dedent(
    """
    import sys, warnings
    from ferrojob import Memory
    warnings.simplefilter("error")
    memory = Memory(sys.argv[1])

    def square(x):
        return x * x

    cached = memory.cache(square)
    for round in range(int(sys.argv[2])):
        for x in range(5):
            assert cached(x) == x * x
        if round % 3 == 0:
            memory.clear()
    print("ok")
    """
)


def test_calls_never_fail_while_other_processes_clear_the_cache(tmp_path):
    script = tmp_path / "clearing.py"
    script.write_text(CLEARING)
    location = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), str(location), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(__file__),
        )
        for _ in range(3)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        assert out.strip() == "ok"


READ_ONLY = textwrap.dedent(
    """
    import os, sys, warnings
    from ferrojob import Memory

    calls = []

    def double(x):
        calls.append(x)
        return 2 * x

    if sys.argv[2] == "fill":
        cached = Memory(sys.argv[1]).cache(double)
        cached(1)
        raise SystemExit(0)
    if os.geteuid() == 0:  # root writes anywhere: test as nobody
        os.setgid(65534)
        os.setuid(65534)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = Memory(sys.argv[1]).cache(double)
        assert cached(1) == 2 and calls == [], calls   # a hit: served
        assert cached(2) == 4 and calls == [2], calls  # a miss: computed, not stored
        assert cached(2) == 4 and calls == [2, 2], calls
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # warned once, with the path
    assert sys.argv[1] in messages[0], messages
    print("ok")
    """
)


def test_a_read_only_cache_serves_hits_and_computes_misses(tmp_path):
    # pytest's tmp_path lies in a folder only its owner may enter; the test may switch users.
    tmp_path = tempfile.mkdtemp()
    os.chmod(tmp_path, 0o755)
    script = os.path.join(tmp_path, "read_only.py")
    with open(script, "w") as handle:
        handle.write(READ_ONLY)
    location = os.path.join(tmp_path, "cache")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(script), str(location), "fill"], check=True, env=env)
    for folder, _, files in os.walk(location):
        os.chmod(folder, 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(location), "check"],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == "ok"
    finally:
        for folder, _, _ in os.walk(location):
            os.chmod(folder, 0o755)
        shutil.rmtree(tmp_path)


def test_infinite_and_invalid_ages(tmp_path):
    from ferrojob import InvalidParameterError

    memory = Memory(tmp_path)
    memory.cache(abs)(-1)
    memory.reduce_size(age_limit=float("inf"))  # no limit: nothing is too old
    assert len(memory.store.entries()) == 1
    with pytest.raises(InvalidParameterError, match="age_limit"):
        memory.reduce_size(age_limit=float("nan"))
