"""pytest plugin: run joblib's own tests with joblib's public names resolved to ferrojob's.

    FERROJOB_AS_JOBLIB=1 python -m pytest -p ferrojob_as_joblib --pyargs joblib.test.test_parallel

With ``FERROJOB_AS_JOBLIB=1`` in the environment, ``import ferrojob`` (here, and in every worker,
which inherits the variable) replaces joblib's public names by ferrojob's as soon as joblib is
imported. Tests that check joblib internals or documented differences are skipped, each with its
reason, from ``skips.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["FERROJOB_AS_JOBLIB"] = "1"

import ferrojob  # noqa: F401 - installs the swap before joblib's test modules import joblib

SKIPS = Path(__file__).with_name("skips.txt")


def _skips() -> dict[str, str]:
    """``test id prefix -> reason`` from skips.txt (``# reason`` lines apply to the ids below)."""
    skips: dict[str, str] = {}
    reason = "unspecified"
    for line in SKIPS.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            reason = line.lstrip("# ")
            continue
        skips[line] = reason
    return skips


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = _skips()
    for item in items:
        name = f"{item.module.__name__.rpartition('.')[2]}::{item.name}"
        for prefix, reason in skips.items():
            if name == prefix or name.startswith(prefix + "["):
                item.add_marker(pytest.mark.skip(reason=f"ferrojob: {reason}"))
                break
