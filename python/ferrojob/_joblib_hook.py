"""Register the "ferrojob" joblib backend when joblib gets imported — without importing it.

If joblib is already imported, registration happens at once; otherwise a meta-path finder waits
for ``import joblib`` and registers right after joblib's own module has run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any


def _register() -> None:
    # Importing ferrojob.joblib_backend registers the backend. Should that module be importing
    # joblib right now (it was imported first), this returns it half made, and it registers
    # itself once defined.
    importlib.import_module("ferrojob.joblib_backend")


class _RegisterAfterExec(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register()


class _JoblibFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if name != "joblib":
            return None
        sys.meta_path.remove(self)  # one registration; let the real finders find joblib
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install() -> None:
    if sys.modules.get("joblib") is not None:  # None: an import of joblib is blocked
        _register()
    elif not any(isinstance(finder, _JoblibFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _JoblibFinder())
