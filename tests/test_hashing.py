"""ferrojob.hash: content hashing, numpy-aware, order-independent, stable across processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ferrojob import InvalidParameterError, hash

np = pytest.importorskip("numpy")


def test_equal_content_equal_digest():
    assert hash([1, "a", 2.5, None]) == hash([1, "a", 2.5, None])
    assert hash([1, 2]) != hash([2, 1])
    assert hash((1,)) != hash([1])
    assert len(hash("x")) == 32
    assert len(hash("x", hash_name="blake3")) == 64


def test_dicts_and_sets_ignore_order():
    assert hash({"a": 1, "b": 2}) == hash({"b": 2, "a": 1})
    assert hash({1: "x", "k": 2}) == hash({"k": 2, 1: "x"})  # keys that do not sort together
    assert hash({3, 1, 2}) == hash({2, 3, 1})
    assert hash(frozenset({1, 2})) != hash({1, 2})
    assert hash({"a": 1}) != hash({"a": 2})


def test_arrays_hash_their_dtype_shape_order_and_bytes():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert hash(a) == hash(a.copy())
    assert hash(a) != hash(a.astype(np.float32))
    assert hash(a) != hash(a.reshape(4, 3))
    assert hash(a) != hash(np.asfortranarray(a))
    changed = a.copy()
    changed[2, 3] += 1
    assert hash(a) != hash(changed)
    assert hash(a[:, ::2]) == hash(np.ascontiguousarray(a[:, ::2]))


def test_large_arrays_and_every_hash_name():
    big = np.random.default_rng(0).random(3_000_000)
    for name in ("xxh3", "blake3", "md5", "sha1"):
        digest = hash(big, hash_name=name)
        assert digest == hash(big.copy(), hash_name=name)
        other = big.copy()
        other[-1] += 1
        assert digest != hash(other, hash_name=name)


def test_object_arrays_structured_and_zero_d():
    objects = np.array([{"a": 1}, [1, 2], "s"], dtype=object)
    assert hash(objects) == hash(objects.copy())
    structured = np.zeros(3, dtype=[("x", "i4"), ("y", "f8")])
    assert hash(structured) == hash(structured.copy())
    assert hash(np.array(1.0)) != hash(np.array([1.0]))


def test_memmaps_with_coerce_mmap(tmp_path):
    path = tmp_path / "m.dat"
    memmap = np.memmap(path, dtype=np.float64, shape=(10,), mode="w+")
    plain = np.asarray(memmap).copy()
    assert hash(memmap, coerce_mmap=True) == hash(plain)
    assert hash(memmap) != hash(plain)


def module_level_function():
    return 1


def test_functions_hash_by_reference():
    assert hash(module_level_function) == hash(module_level_function)
    assert hash(module_level_function) != hash(test_functions_hash_by_reference)


def test_stable_across_processes():
    program = (
        "import numpy as np, ferrojob; "
        "print(ferrojob.hash({'b': [1, 2.5, 'x'], 'a': np.arange(1000).reshape(10, 100), 's': {3, 1}}))"
    )
    digests = {
        subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    here = hash({"s": {1, 3}, "a": np.arange(1000).reshape(10, 100), "b": [1, 2.5, "x"]})
    assert digests == {here + "\n"}


def test_unknown_hash_name():
    with pytest.raises(InvalidParameterError, match="is not a hash ferrojob computes"):
        hash(1, hash_name="crc")


def test_equal_values_hash_equal_whatever_their_identity():
    import pickle
    from decimal import Decimal

    import numpy as np

    text = "foo"
    a, b = {text: "bar"}, {text: "bar"}
    c = pickle.loads(pickle.dumps(b))  # equal, with distinct string objects
    assert hash([a, b]) == hash([a, c])
    dt1, dt2 = np.dtype("f8"), pickle.loads(pickle.dumps(np.dtype("f8")))
    assert hash([dt1, dt1]) == hash([dt1, dt2])
    assert hash({Decimal("NaN"), Decimal(1), 2}) == hash({2, Decimal(1), Decimal("NaN")})
