"""The backend registry: names → backend factories.

ferrojob's Rust process pool answers to "loky" (joblib's default name), "processes" and
"multiprocessing", so joblib code runs unchanged.

Example::

    >>> from ferrojob import register_parallel_backend
    >>> from ferrojob.backends.threads import ThreadingBackend
    >>> register_parallel_backend("my_threads", ThreadingBackend)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidParameterError, UnknownBackendError, compose_message
from .base import Backend, CallOptions, Completion, Session

__all__ = [
    "DEFAULT_BACKEND",
    "Backend",
    "CallOptions",
    "Completion",
    "Session",
    "check_backend_name",
    "default_backend",
    "get_backend",
    "register_parallel_backend",
]

DEFAULT_BACKEND = "loky"


def _processes() -> Backend:
    from .processes import ProcessBackend

    return ProcessBackend()


def _threading() -> Backend:
    from .threads import ThreadingBackend

    return ThreadingBackend()


def _sequential() -> Backend:
    from .sequential import SequentialBackend

    return SequentialBackend()


def _dask() -> Backend:
    from .dask import DaskBackend

    return DaskBackend()


def _ray() -> Backend:
    from .ray import RayBackend

    return RayBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {
    "dask": _dask,
    "ray": _ray,
    "loky": _processes,
    "ferrojob": _processes,  # joblib code that selected ferrojob's joblib backend by name
    "processes": _processes,
    "multiprocessing": _processes,
    "threading": _threading,
    "sequential": _sequential,
}
_INSTANCES: dict[str, Backend] = {}
#: ferrojob's own backends, whatever is registered under their names later.
_BUILT_IN = dict(_FACTORIES)


def register_parallel_backend(name: str, factory: Callable[[], Backend], make_default: bool = False) -> None:
    """Make ``factory()`` (a ``ferrojob.backends.Backend``) available as ``backend=name``.

    ``make_default=True`` also makes it the default backend of ``Parallel``.

    Example::

        >>> from ferrojob import register_parallel_backend
        >>> from ferrojob.backends.threads import ThreadingBackend
        >>> register_parallel_backend("threads2", ThreadingBackend)
    """
    global DEFAULT_BACKEND
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"a backend name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise InvalidParameterError(
            f"register_parallel_backend({name!r}, ...) needs a factory (a Backend class or a "
            f"function returning a Backend), got {factory!r}"
        )
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)
    if make_default:
        DEFAULT_BACKEND = name
        if _DEFAULT_OWNER is not None:
            _DEFAULT_OWNER.DEFAULT_BACKEND = name


#: Under the import swap, joblib's ``joblib.parallel`` module, whose ``DEFAULT_BACKEND`` variable
#: then owns the default: joblib code sets and restores that variable directly.
_DEFAULT_OWNER: Any = None


def follow_default_of(module: Any) -> None:
    """Take the default backend from ``module.DEFAULT_BACKEND`` from now on (the import swap)."""
    global _DEFAULT_OWNER
    _DEFAULT_OWNER = module


def default_backend() -> str:
    """The backend ``Parallel`` uses when none is chosen (see ``make_default``)."""
    if _DEFAULT_OWNER is not None:
        return str(_DEFAULT_OWNER.DEFAULT_BACKEND)
    return DEFAULT_BACKEND


#: joblib's own backend classes, as objects passed to ``backend=``, and what runs them here.
_JOBLIB_BACKEND_CLASSES = {
    ("joblib._parallel_backends", "LokyBackend"): "loky",
    ("joblib._parallel_backends", "MultiprocessingBackend"): "multiprocessing",
    ("joblib._parallel_backends", "ThreadingBackend"): "threading",
    ("joblib._parallel_backends", "SequentialBackend"): "sequential",
    ("ferrojob.joblib_backend", "FerrojobBackend"): "loky",
}


def _as_name(backend: Any) -> Any:
    """``backend`` as a registered name when it is an object joblib accepts in its place: an
    instance of one of joblib's backend classes, or a ``multiprocessing`` context (ferrojob's
    workers are always fresh interpreters, whatever its start method)."""
    if isinstance(backend, (str, Backend)):
        return backend
    cls = type(backend)
    name = _JOBLIB_BACKEND_CLASSES.get((cls.__module__, cls.__qualname__))
    if name is not None:
        return name
    if cls.__module__ == "multiprocessing.context" and hasattr(backend, "get_start_method"):
        return "loky"
    return backend


def check_backend_name(name: Any) -> None:
    """Raise ``UnknownBackendError`` (a ``ValueError``) listing the valid names."""
    name = _as_name(name)
    if isinstance(name, Backend):
        return
    if isinstance(name, str) and name in _FACTORIES:
        return
    from .foreign import is_joblib_backend

    if is_joblib_backend(name):  # a custom joblib backend: driven through its own API
        return
    valid = sorted(_FACTORIES)
    listing = ", ".join(repr(n) for n in valid)
    from difflib import get_close_matches

    close = get_close_matches(str(name), valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownBackendError(
        compose_message(
            f"unknown backend {name!r}.",
            f"{hint}valid backends are {listing};",
            "register your own with register_parallel_backend(name, factory)",
        ),
        code="FJ202",
    )


def get_backend(name: Any) -> Backend:
    """The backend registered as ``name`` (created once, then reused), or the backend object
    itself (see ``_as_name``)."""
    name = _as_name(name)
    if isinstance(name, Backend):
        return name
    from .foreign import ForeignBackend, is_joblib_backend

    if is_joblib_backend(name):
        return ForeignBackend(name)
    check_backend_name(name)
    backend = _INSTANCES.get(name)
    if backend is None:
        made = _FACTORIES[name]()
        # A factory of one of joblib's own backends (joblib code registering joblib's classes)
        # stands for ferrojob's equivalent.
        equivalent = _as_name(made)
        if isinstance(equivalent, str):
            made = _BUILT_IN[equivalent]()
        elif is_joblib_backend(made):  # a custom joblib backend class was registered
            made = ForeignBackend(made)
        if not isinstance(made, Backend):
            raise InvalidParameterError(
                f"the factory registered for backend {name!r} returned {made!r}, not a ferrojob.backends.Backend"
            )
        backend = _INSTANCES[name] = made
    return backend
