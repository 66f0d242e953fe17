"""The examples in ferrojob's docstrings run and show what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "ferrojob",
    "ferrojob.parallel",
    "ferrojob.executor",
    "ferrojob.config",
    "ferrojob.errors",
    "ferrojob.backends",
    "ferrojob.hashing",
    "ferrojob.persistence",
    "ferrojob.memory",
    "ferrojob._pickling",
    "ferrojob.joblib_backend",
    "ferrojob.backends.foreign",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in ("ferrojob.joblib_backend", "ferrojob.backends.foreign"):
        pytest.importorskip("joblib")
    if name in ("ferrojob.hashing", "ferrojob.persistence"):
        pytest.importorskip("numpy")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
