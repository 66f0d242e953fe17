"""Register the "ferrojob" joblib backend when joblib gets imported — without importing it.

If joblib is already imported, registration happens at once; otherwise a meta-path finder waits
for ``import joblib`` and registers right after joblib's own module has run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: joblib was imported by ``ferrojob.joblib_backend`` itself, before it could register: it
#: registers once it is defined (``register_if_deferred``).
_deferred = False


def _register() -> None:
    global _deferred
    backend_module = sys.modules.get("ferrojob.joblib_backend")
    if backend_module is not None and not hasattr(backend_module, "register"):
        _deferred = True  # it is importing joblib right now, and is not defined yet
        return
    _deferred = False
    from .joblib_backend import register

    register()
    if os.environ.get(SWAP_VARIABLE) == "1":
        swap_public_names()


#: Set to "1", joblib's public names resolve to ferrojob's in this process and its workers (the
#: harness that runs joblib's own test suite against ferrojob; see tests/joblib_suite).
SWAP_VARIABLE = "FERROJOB_AS_JOBLIB"


def swap_public_names() -> None:
    """Make ``joblib.<name>`` ferrojob's ``<name>`` for every public name ferrojob has (the
    others, such as ``Logger`` or ``register_store_backend``, stay joblib's)."""
    import joblib

    import ferrojob

    originals = {name: getattr(joblib, name) for name in joblib.__all__ if name in ferrojob.__all__}
    # Wherever joblib's modules hold the original (``from joblib.parallel import Parallel``).
    modules = [module for name, module in list(sys.modules.items()) if name == "joblib" or name.startswith("joblib.")]
    for name, original in originals.items():
        replacement = getattr(ferrojob, name)
        for module in modules:
            if getattr(module, name, None) is original:
                setattr(module, name, replacement)


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


def register_if_deferred() -> None:
    """Called by ``ferrojob.joblib_backend`` once defined: the registration its own import of
    joblib had to put off happens now."""
    if _deferred:
        _register()


def install() -> None:
    if sys.modules.get("joblib") is not None:  # None: an import of joblib is blocked
        _register()
    elif not any(isinstance(finder, _JoblibFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _JoblibFinder())
