"""``parallel_config``: defaults for every ``Parallel`` created inside a ``with`` block.

Example::

    >>> from ferrojob import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="threading", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from ._settings import CONFIG, check, check_given, invalid

if TYPE_CHECKING:
    from .report import RunReport

__all__ = [
    "DEFAULT",
    "Settings",
    "current_config",
    "effective_settings",
    "is_default",
    "parallel_backend",
    "parallel_config",
]


class _Default:
    """Marks a parameter the user did not pass (so outer settings apply)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "default"


DEFAULT: Any = _Default()


def is_default(value: Any) -> bool:
    return value is DEFAULT


def is_given(value: Any) -> bool:
    return value is not DEFAULT


class Config(NamedTuple):
    """The settings ``parallel_config`` blocks have set (``DEFAULT``: not set)."""

    backend: Any = DEFAULT
    n_jobs: Any = DEFAULT
    verbose: Any = DEFAULT
    temp_folder: Any = DEFAULT
    max_nbytes: Any = DEFAULT
    mmap_mode: Any = DEFAULT
    prefer: Any = DEFAULT
    require: Any = DEFAULT
    inner_max_num_threads: Any = DEFAULT
    return_exceptions: Any = DEFAULT
    initializer: Any = DEFAULT
    initargs: Any = DEFAULT
    dump_format: Any = DEFAULT
    #: Where every call of the block writes its run report (a ``ReportFiles``), or None.
    report: Any = DEFAULT
    backend_params: Mapping[str, Any] = MappingProxyType({})


_CONFIG: contextvars.ContextVar[Config] = contextvars.ContextVar("ferrojob_config", default=Config())  # noqa: B039 - immutable


def current_config() -> Config:
    """The settings in force in this thread/context."""
    return _CONFIG.get()


class Settings(NamedTuple):
    """What one ``Parallel`` call runs with: its own keywords where given, else the enclosing
    ``parallel_config``'s, else ``DEFAULT`` (the backend's or ferrojob's default applies)."""

    backend: Any
    #: Whether ``backend`` was given to ``Parallel`` itself (a conflict is then an error, where
    #: a ``parallel_config`` backend yields to ``require="sharedmem"``).
    backend_is_explicit: bool
    n_jobs: Any
    verbose: int
    max_nbytes: Any
    mmap_mode: Any
    prefer: Any
    require: Any
    inner_max_num_threads: Any
    return_exceptions: bool
    initializer: Any
    initargs: tuple
    backend_params: Mapping[str, Any]


def effective_settings(**explicit: Any) -> Settings:
    """Merge ``Parallel``'s keywords (``DEFAULT`` where not given) with ``parallel_config``:
    the one place where the two meet."""
    config = current_config()

    def pick(name: str) -> Any:
        value = explicit.get(name, DEFAULT)
        return getattr(config, name) if is_default(value) else value

    backend = explicit.get("backend", DEFAULT)
    backend_is_explicit = not is_default(backend) and backend is not None
    verbose = pick("verbose")
    return Settings(
        backend=backend if backend_is_explicit else config.backend,
        backend_is_explicit=backend_is_explicit,
        n_jobs=pick("n_jobs"),
        verbose=0 if is_default(verbose) else int(verbose),
        max_nbytes=pick("max_nbytes"),
        mmap_mode=pick("mmap_mode"),
        prefer=pick("prefer"),
        require=pick("require"),
        inner_max_num_threads=config.inner_max_num_threads,
        return_exceptions=bool(pick("return_exceptions")) if not is_default(pick("return_exceptions")) else False,
        # joblib >= 1.5 spells these as backend keywords: parallel_config(backend=..., initializer=f)
        initializer=_given(pick("initializer"), config.backend_params.get("initializer")),
        initargs=tuple(_given(pick("initargs"), config.backend_params.get("initargs")) or ()),
        backend_params=dict(config.backend_params),
    )


def _given(value: Any, fallback: Any) -> Any:
    return fallback if is_default(value) else value


class parallel_config(contextlib.ContextDecorator):
    """Set defaults for ``Parallel`` calls inside a ``with`` block (or a decorated function).

    Parameters left out keep the value of the enclosing configuration. ``backend``: a registered
    backend name ("loky"/"processes"/"multiprocessing" for ferrojob's process pool, "threading",
    "sequential", or a registered custom backend); ``n_jobs``, ``verbose``, ``prefer`` and
    ``require`` as in ``Parallel``; ``temp_folder``, ``max_nbytes`` and ``mmap_mode`` as in joblib;
    ``inner_max_num_threads`` caps BLAS/OpenMP threads in each worker; ``return_exceptions`` as in
    ``Parallel``; ``report="run.html"`` writes every call's ``RunReport`` (``run-001.html``,
    ``run-002.html``..., or ``.svg``/``.txt``), scikit-learn's calls included; extra keywords are
    handed to the backend. ``with parallel_config(...) as
    config`` gives the settings in force by name, as joblib's does (``config["backend"]``: the
    backend object; None where nothing is set).

    Example::

        >>> from ferrojob import Parallel, delayed, parallel_config
        >>> @parallel_config(backend="threading")
        ... def run():
        ...     return Parallel(n_jobs=2)(delayed(abs)(-1) for _ in range(2))
        >>> run()
        [1, 1]
    """

    def __init__(
        self,
        backend: Any = DEFAULT,
        *,
        n_jobs: Any = DEFAULT,
        verbose: Any = DEFAULT,
        temp_folder: Any = DEFAULT,
        max_nbytes: Any = DEFAULT,
        mmap_mode: Any = DEFAULT,
        prefer: Any = DEFAULT,
        require: Any = DEFAULT,
        inner_max_num_threads: Any = DEFAULT,
        return_exceptions: Any = DEFAULT,
        initializer: Any = DEFAULT,
        initargs: Any = DEFAULT,
        dump_format: Any = DEFAULT,
        report: Any = DEFAULT,
        **backend_params: Any,
    ) -> None:
        given = dict(
            backend=backend,
            n_jobs=n_jobs,
            verbose=verbose,
            temp_folder=temp_folder,
            max_nbytes=max_nbytes,
            mmap_mode=mmap_mode,
            prefer=prefer,
            require=require,
            inner_max_num_threads=inner_max_num_threads,
            return_exceptions=return_exceptions,
            initializer=initializer,
            initargs=initargs,
            dump_format=dump_format,
            report=report,
        )
        # Checked here, kept as given (``with parallel_config(...) as config`` shows them so, as
        # joblib's does); n_jobs is kept converted ("2" is 2).
        given["n_jobs"] = check_given(CONFIG, is_given, **given)["n_jobs"]
        if is_default(backend) and (not is_default(inner_max_num_threads) or backend_params):
            raise invalid(
                "inner_max_num_threads and backend parameters only apply to a backend named "
                "in the same parallel_config.",
                'name it: parallel_config(backend="loky", inner_max_num_threads=2)',
            )
        if not is_default(backend) and not is_default(inner_max_num_threads) and inner_max_num_threads is not None:
            from .backends import get_backend

            if not get_backend(backend).supports_inner_max_num_threads:
                raise invalid(
                    f"backend {backend!r} does not accept inner_max_num_threads: its tasks do not "
                    "run in worker processes of their own, whose threads could be capped.",
                    'use a process backend: parallel_config(backend="loky", inner_max_num_threads=2)',
                )
        if not is_default(report) and report is not None:
            given["report"] = ReportFiles(check("report", report))  # numbered per parallel_config
        self._changes = {key: value for key, value in given.items() if not is_default(value)}
        self._backend_params = backend_params
        self._tokens: list[contextvars.Token[Config]] = []

    def __enter__(self) -> Mapping[str, Any]:
        outer = _CONFIG.get()
        params = dict(outer.backend_params, **self._backend_params)
        config = outer._replace(backend_params=params, **self._changes)
        self._tokens.append(_CONFIG.set(config))
        return _as_mapping(config)

    def __exit__(self, *exc_info: object) -> None:
        _CONFIG.reset(self._tokens.pop())


class ReportFiles:
    """The files ``parallel_config(report="run.html")`` writes: ``run-001.html``,
    ``run-002.html``... one per call made in the block, numbered in the order calls end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def next_path(self) -> str:
        with self._lock:
            number = next(self._numbers)
        stem, suffix = os.path.splitext(self.path)
        return f"{stem}-{number:03d}{suffix}"

    def write(self, report: RunReport) -> None:
        """Save ``report`` as the next file. A file that cannot be written costs the call a
        warning, never its results."""
        path = self.next_path()
        try:
            report.save(path)
        except OSError as error:
            warnings.warn(f"the run report could not be written to {path!r}: {error}", RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"ReportFiles({self.path!r})"


class parallel_backend(parallel_config):
    """The older spelling of ``parallel_config(backend=..., n_jobs=-1)`` (joblib < 1.3); as in
    joblib, ``with parallel_backend(...) as (backend, n_jobs)`` gives the backend and ``n_jobs``.

    Example::

        >>> from ferrojob import Parallel, delayed, parallel_backend
        >>> with parallel_backend("threading", n_jobs=2):
        ...     Parallel()(delayed(abs)(-2) for _ in range(1))
        [2]
    """

    def __init__(
        self,
        backend: Any,
        n_jobs: int = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        extra = {} if inner_max_num_threads is None else {"inner_max_num_threads": inner_max_num_threads}
        super().__init__(backend, n_jobs=n_jobs, **extra, **backend_params)

    def __enter__(self) -> tuple[Any, Any]:  # type: ignore[override]
        config = super().__enter__()
        return config["backend"], config["n_jobs"]


def _as_mapping(config: Config) -> Mapping[str, Any]:
    """What ``with parallel_config(...) as config`` gives, shaped as joblib's: the settings in
    force by name (None where unset), ``config["backend"]`` being the backend object itself (a
    custom joblib backend: its instance, the one ``Parallel`` calls run on)."""
    settings = {name: None if is_default(value) else value for name, value in config._asdict().items()}
    if settings["backend"] is not None:
        from .backends import get_backend
        from .backends.foreign import ForeignBackend

        backend = get_backend(settings["backend"])
        settings["backend"] = backend.backend if isinstance(backend, ForeignBackend) else backend
    return MappingProxyType(settings)
