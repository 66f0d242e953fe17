"""``load(..., allow_pickle=False)`` on files made by an attacker: data in, data out, or a clear
refusal — never an object array, an allocation the file cannot justify, or a crash."""

from __future__ import annotations

import datetime
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from ferrojob import DamagedFileError, RefusedContentError, dump, load
from ferrojob.persistence import safe_pickle

numeric = np._core.numeric if hasattr(np, "_core") else np.core.numeric
multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


class Forged:
    """Pickles as whatever ``__reduce__`` value it is given (what a hostile writer can emit)."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def forged_dtype(descriptor="f8", state=(3, "<", None, None, None, -1, -1, 0)):
    return Forged(np.dtype, (descriptor, False, True), state)


def safe_load(value):
    buffers = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return safe_pickle.loads(data, [b.raw() for b in buffers])


def test_plain_data_and_canonical_arrays_round_trip(tmp_path):
    path = tmp_path / "data.fj"
    value = {
        "floats": np.arange(6.0).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
        "strided": np.arange(10)[::3],  # not contiguous: numpy's _reconstruct path
        "big_endian": np.arange(4, dtype=">i4"),
        "strings": np.array(["ab", "c"]),
        "bytes": np.array([b"x", b"yz"]),
        "bools": np.array([True, False]),
        "times": np.array(["2026-01-01"], dtype="M8[D]"),
        "deltas": np.array([3], dtype="m8[3s]"),
        "scalar": np.float32(2.5),
        "dtype": np.dtype("<u2"),
        "shared": [1, (2, 3)],
        "misc": {4, frozenset({5})},
        "z": 1j,
        "cut": slice(1, 5, 2),
        "raw": bytearray(b"abc"),
    }
    value["again"] = value["shared"]  # one object twice: still one object after loading
    dump(value, path)
    loaded = load(path, allow_pickle=False)
    for key in ("floats", "fortran", "strided", "big_endian", "strings", "bytes", "bools", "times", "deltas"):
        np.testing.assert_array_equal(loaded[key], value[key])
        assert loaded[key].dtype == value[key].dtype
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["scalar"] == np.float32(2.5) and type(loaded["scalar"]) is np.float32
    assert loaded["dtype"] == np.dtype("<u2")
    assert loaded["again"] is loaded["shared"] and loaded["shared"] == [1, (2, 3)]
    assert loaded["misc"] == {4, frozenset({5})} and loaded["z"] == 1j
    assert loaded["cut"] == slice(1, 5, 2) and loaded["raw"] == bytearray(b"abc")


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.fj"
    dump({"a": np.array([1, "x", None], dtype=object)}, path)
    with pytest.raises(RefusedContentError, match="object"):
        load(path, allow_pickle=False)
    assert load(path)["a"][1] == "x"  # trusted mode still reads it


def test_a_dtype_with_forged_flags_is_refused_not_built():
    # flags=63 would make numpy treat the float64 bytes as object pointers: a segfault on use.
    bad = forged_dtype(state=(3, "|", None, None, None, -1, -1, 63))
    with pytest.raises(RefusedContentError, match="extra state"):
        safe_load(Forged(numeric._frombuffer, (b"\0" * 16, bad, (2,), "C")))
    with pytest.raises(RefusedContentError):
        safe_load(forged_dtype("O8", (3, "|", None, None, None, -1, -1, 63)))
    with pytest.raises(RefusedContentError):  # structured dtypes: fields from the file
        safe_load(np.dtype([("a", "f8")]))


def test_arrays_must_match_their_data_exactly():
    for shape in [(3,), (1,), (2**62, 2**62), (-1,)]:
        with pytest.raises(DamagedFileError):
            safe_load(Forged(numeric._frombuffer, (b"\0" * 16, np.dtype("f8"), shape, "C")))
    array = safe_load(Forged(numeric._frombuffer, (bytearray(16), np.dtype("f8"), (2,), "C")))
    np.testing.assert_array_equal(array, [0.0, 0.0])


def test_numpy_constructors_and_state_never_see_file_values():
    # ndarray(shape) would allocate; ndarray(shape, buffer=..., offset=...) would read anywhere.
    with pytest.raises(DamagedFileError):
        safe_load(Forged(np.ndarray, ((10**12,), np.dtype("u1"))))
    # BUILD on an array: numpy's __setstate__ with the file's shape and dtype.
    built = Forged(
        numeric._frombuffer, (b"\0" * 8, np.dtype("f8"), (1,), "C"), (1, (1000,), np.dtype("f8"), False, b"")
    )
    with pytest.raises(RefusedContentError, match="state"):
        safe_load(built)
    with pytest.raises(RefusedContentError, match=r"numpy\.ma"):
        safe_load(np.ma.masked_array([1, 2]))
    with pytest.raises(RefusedContentError, match="subclass"):
        safe_load(Forged(multiarray._reconstruct, (complex, (0,), b"b")))


def test_no_allocation_the_file_cannot_justify():
    with pytest.raises(RefusedContentError, match="bytearray"):
        safe_load(Forged(bytearray, (200_000_000,)))
    with pytest.raises(DamagedFileError):
        safe_load(Forged(multiarray.scalar, (np.dtype("f8"), b"\0" * 3)))


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "date.fj"
    dump({"when": datetime.date(2026, 1, 1)}, path)
    with pytest.raises(RefusedContentError, match=r"refuses datetime\.date") as raised:
        load(path, allow_pickle=False)
    assert isinstance(raised.value, pickle.UnpicklingError)
    with pytest.raises(RefusedContentError):
        safe_load(Forged(eval, ("1",)))


FUZZ_LOAD = os.path.join(os.path.dirname(__file__), "..", "fuzz", "fuzz_load.py")


def test_mutation_fuzz_of_safe_load_raises_only_ferrojob_errors(tmp_path):
    """A short run in a child process (a crash there fails the test instead of killing pytest);
    ``python fuzz/fuzz_load.py ROUNDS SEED FOLDER`` runs it for as long as you like."""
    rounds = os.environ.get("FERROJOB_FUZZ_ROUNDS", "400")
    done = subprocess.run(
        [sys.executable, FUZZ_LOAD, rounds, "20261126", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"fuzzed {rounds}" in done.stdout


def test_a_dump_compressed_more_than_once_is_not_unwrapped_again_and_again(tmp_path):
    import gzip
    import io

    from ferrojob import NotADumpFileError

    buffer = io.BytesIO()
    dump([1, 2, 3], buffer)
    layered = buffer.getvalue()
    for _ in range(300):
        layered = gzip.compress(layered, compresslevel=1)
    path = tmp_path / "layers.gz"
    path.write_bytes(layered)
    for source in (path, io.BytesIO(layered)):
        with pytest.raises(NotADumpFileError, match=r"compressed twice \(gzip inside gzip\)"):
            load(source)
    once = tmp_path / "once.gz"
    once.write_bytes(gzip.compress(buffer.getvalue()))
    assert load(once) == [1, 2, 3]
