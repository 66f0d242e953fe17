"""``Memory``: a disk cache of function results, on ferrojob's Rust store.

Entries are written atomically (a temporary directory renamed into place) under a per-entry
lock, so processes calling the same cached function at once compute it once, or harmlessly
twice — never a corrupt or lost entry. Results are stored with ``dump`` (numpy arrays raw, or
compressed with ``compress``) and loaded with ``load`` (memory-mapped with ``mmap_mode``). A
function's cache is dropped when its source code changes.

Example::

    >>> import tempfile
    >>> from ferrojob import Memory
    >>> memory = Memory(tempfile.mkdtemp(), verbose=0)
    >>> @memory.cache
    ... def square(x):
    ...     print("computing")
    ...     return x * x
    >>> square(3)
    computing
    9
    >>> square(3)
    9
"""

from __future__ import annotations

import datetime
import errno
import functools
import inspect
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _core
from ._caller import user_stacklevel
from ._tasks import describe_arguments
from .errors import DamagedFileError, InvalidParameterError, NotADumpFileError, compose_message
from .hashing import hash as content_hash
from .persistence import dump, load, parse_compress

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["MemorizedFunc", "MemorizedResult", "Memory", "NotMemorizedFunc", "expires_after"]

#: How long a call waits for another process computing the same entry before computing it too.
LOCK_WAIT = 600.0
_OUTPUT = "output.fj"
_METADATA = "metadata.json"
#: Characters of a function's name kept in its cache folder's name.
_READABLE_LEN = 80
#: Cache locations already warned about being read-only (one warning per location).
_READ_ONLY_WARNED: set[str] = set()


#: Where Memory's ``verbose`` details go (>= 20: each query; > 10: each computation), as
#: joblib's; the lines of ``verbose`` > 0 are printed.
_LOG = logging.getLogger("ferrojob.memory")


def _write_gitignore(location: str) -> None:
    """A ``.gitignore`` of "*" in the cache folder, as joblib writes one: a cache inside a
    repository is never committed. Best effort (a read-only location keeps working)."""
    path = os.path.join(location, ".gitignore")
    if os.path.exists(path):
        return
    try:
        os.makedirs(location, exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:
            handle.write("# Created by ferrojob automatically.\n*\n")
    except OSError:
        pass


def _warn_read_only(location: str, error: OSError) -> None:
    if location not in _READ_ONLY_WARNED:
        _READ_ONLY_WARNED.add(location)
        warnings.warn(
            f"the cache in {location} cannot be written ({error.strerror or error}): cached results "
            "are still used, new ones are computed and not stored",
            stacklevel=4,
        )


def _is_read_only(error: OSError) -> bool:
    return error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _function_id(func: Callable[..., Any]) -> str:
    """The folder name of ``func``'s cache: a readable prefix (module and qualified name, made
    file-system safe) and a hash of the exact module and qualified name — plus, for lambdas and
    local functions, which share names, where their code starts. Two functions never share a
    folder, the name never starts with "." (hidden folders are the store's own) and stays far
    below the 255-byte limit of a file name."""
    module = getattr(func, "__module__", None) or "unknown"
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if main:
            module = "__main__." + os.path.splitext(os.path.basename(main))[0]
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    exact = f"{module}\0{name}"
    code = getattr(func, "__code__", None)
    if code is not None and "<" in name:  # <lambda>, <locals>: names shared by many functions
        columns = [col for _, _, col, _ in getattr(code, "co_positions", lambda: [])() if col]
        exact += f"\0{code.co_filename}:{code.co_firstlineno}:{min(columns, default=0)}"
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{module}.{name}").strip(".")[:_READABLE_LEN]
    hasher = _core.Hasher("xxh3")
    hasher.update(exact.encode("utf-8", "surrogatepass"))
    return f"{readable or 'function'}-{hasher.hexdigest()[:16]}"


#: (location, function) pairs already told that joblib's cache of the function is not read.
_JOBLIB_CACHE_TOLD: set[tuple[str, str]] = set()


def _joblib_cache_of(location: str, func: Callable[..., Any]) -> str | None:
    """The folder of joblib's cache of ``func`` in ``location`` (``location/joblib/<module
    path>/<name>``, as joblib names it), if there is one. A script's functions (``__main__``)
    are looked for under every ``__main__-<script path>`` folder."""
    root = os.path.join(location, "joblib")
    if not os.path.isdir(root):
        return None  # the common case: one stat
    name = getattr(func, "__name__", None)
    module = getattr(func, "__module__", None)
    if not isinstance(name, str) or not isinstance(module, str):
        return None
    if module == "__main__":
        candidates = [
            os.path.join(root, entry, name) for entry in sorted(os.listdir(root)) if entry.startswith("__main__-")
        ]
    else:
        candidates = [os.path.join(root, *module.split("."), name)]
    return next((folder for folder in candidates if os.path.isdir(folder)), None)


def _tell_of_joblib_cache(location: str, func: Callable[..., Any], func_id: str) -> None:
    """Once per function and location: joblib's cache of it is there, and is not read."""
    if (location, func_id) in _JOBLIB_CACHE_TOLD:
        return
    _JOBLIB_CACHE_TOLD.add((location, func_id))
    found = _joblib_cache_of(location, func)
    if found is not None:
        warnings.warn(
            f"{func_id}: joblib's cache of this function is in {found}, but ferrojob keeps its own "
            f"cache (in {os.path.join(location, 'ferrojob')}) and does not read joblib's files: "
            "results cached by joblib are computed again, once. Delete the joblib folder when you "
            "no longer need it.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _function_code(func: Callable[..., Any]) -> str:
    """What identifies a version of ``func``: its source, or its bytecode when there is none."""
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        if code is None:
            return repr(func)
        return repr((code.co_code, code.co_consts, code.co_names))


def _age_in_seconds(age_limit: Any) -> float | None:
    if age_limit is None:
        return None
    if isinstance(age_limit, datetime.timedelta):
        return age_limit.total_seconds()
    return float(age_limit)


def expires_after(
    days: float = 0,
    seconds: float = 0,
    microseconds: float = 0,
    milliseconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    weeks: float = 0,
) -> Callable[[dict], bool]:
    """A ``cache_validation_callback`` that recomputes entries older than the given duration.

    Example::

        >>> import tempfile
        >>> from ferrojob import Memory, expires_after
        >>> memory = Memory(tempfile.mkdtemp())
        >>> @memory.cache(cache_validation_callback=expires_after(minutes=5))
        ... def fetch(x):
        ...     return x
    """
    limit = datetime.timedelta(
        days=days,
        seconds=seconds,
        microseconds=microseconds,
        milliseconds=milliseconds,
        minutes=minutes,
        hours=hours,
        weeks=weeks,
    ).total_seconds()

    def still_valid(metadata: dict) -> bool:
        return time.time() - metadata.get("time", 0.0) < limit

    return still_valid


class Memory:
    """A cache of function results in ``location`` (None: no caching, calls go straight through).

    Parameters (as joblib's): ``location`` (a directory; entries go in ``location/ferrojob``),
    ``mmap_mode`` (load cached arrays memory-mapped: "r", "r+", "w+", "c"), ``compress`` (as in
    ``dump``), ``verbose`` (print a line per computation when > 0), ``bytes_limit`` (after each
    new entry, evict the least recently used ones beyond this size; int bytes or "1G"-style).
    """

    def __init__(
        self,
        location: Any = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 0,
        bytes_limit: int | str | None = None,
        backend_options: dict | None = None,
    ) -> None:
        if backend != "local":
            raise InvalidParameterError(
                compose_message(
                    f"backend={backend!r}: ferrojob's Memory stores on the local file system.",
                    'use backend="local" (the default)',
                ),
                code="FJ201",
            )
        from ._settings import parse_size, validate_mmap_mode

        validate_mmap_mode(mmap_mode, "results read into memory")
        if parse_compress(compress)[0] != "raw" and mmap_mode is not None:
            warnings.warn(  # as joblib warns
                f"Memory(compress={compress!r}, mmap_mode={mmap_mode!r}): compressed results cannot be "
                "memory-mapped; they are read into memory (drop compress to map them)",
                UserWarning,
                stacklevel=2,
            )

        self.location = None if location is None else os.fspath(location)
        self.mmap_mode = mmap_mode
        self.compress = compress
        self.verbose = verbose
        self.bytes_limit = parse_size(bytes_limit, "bytes_limit")
        self.backend = backend
        self.backend_options = backend_options or {}
        self._store: _core.Store | None = None
        _ = self.store  # the cache folder exists from here on, as joblib's does

    @property
    def store(self) -> _core.Store | None:
        if self.location is None:
            return None
        if self._store is None:
            self._store = _core.Store(os.path.join(self.location, "ferrojob"))
            _write_gitignore(self.location)
        return self._store

    def __repr__(self) -> str:
        return f"Memory(location={self.location!r})"

    def __reduce__(self) -> tuple:  # the Rust store is reopened where the Memory is unpickled
        return (
            Memory,
            (self.location, self.backend, self.mmap_mode, self.compress, self.verbose, self.bytes_limit),
        )

    @overload
    def cache(
        self,
        func: Callable[_P, _R],
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: Any = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> MemorizedFunc[_P, _R] | NotMemorizedFunc[_P, _R]: ...

    @overload
    def cache(
        self,
        func: None = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: Any = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> Callable[[Callable[_P, _R]], MemorizedFunc[_P, _R] | NotMemorizedFunc[_P, _R]]: ...

    def cache(
        self,
        func: Callable[..., Any] | None = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: Any = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> Any:
        """Cache ``func``'s results: a decorator, used bare (``@memory.cache``) or with options
        (``@memory.cache(ignore=["verbose"])``). ``ignore``: argument names left out of the key;
        ``mmap_mode``: overrides the Memory's; ``cache_validation_callback(metadata)``: return
        False to recompute a cached entry (metadata has "duration" and "time")."""
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise InvalidParameterError(
                f"cache_validation_callback={cache_validation_callback!r} is not callable.",
                code="FJ201",
            )
        if func is None:
            return functools.partial(
                self.cache,
                ignore=ignore,
                verbose=verbose,
                mmap_mode=mmap_mode,
                cache_validation_callback=cache_validation_callback,
            )
        if isinstance(func, (MemorizedFunc, NotMemorizedFunc)):
            func = func.func
        if not callable(func):
            raise TypeError(f"Memory.cache expects a function, got {type(func).__name__}")
        if self.location is None:
            return NotMemorizedFunc(func)
        return MemorizedFunc(
            func,
            self,
            ignore=ignore or [],
            verbose=self.verbose if verbose is None else verbose,
            mmap_mode=self.mmap_mode if mmap_mode is False else mmap_mode,
            cache_validation_callback=cache_validation_callback,
        )

    def eval(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)``, through the cache."""
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Remove every cached entry."""
        if self.store is not None:
            if warn and self.verbose:
                print(f"[Memory] clearing the cache in {self.location}")
            self.store.clear()

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | float | None = None,
    ) -> None:
        """Evict least recently used entries until at most ``bytes_limit`` bytes (default: the
        Memory's) and ``items_limit`` entries remain, and those unused for ``age_limit``."""
        if self.store is None:
            return
        from ._settings import parse_size

        limit = self.bytes_limit if bytes_limit is None else parse_size(bytes_limit, "bytes_limit")
        self.store.reduce_size(limit, items_limit, _age_in_seconds(age_limit))


def _read_entry(store: _core.Store, func_id: str, key: str, mmap_mode: str | None) -> tuple[bool, Any]:
    """``(True, value)`` of a cache entry, or ``(False, None)`` when it is gone (or damaged: it
    is then dropped, with a warning); a read marks it as recently used."""
    entry = store.entry_dir(func_id, key)
    try:
        value = load(os.path.join(entry, _OUTPUT), mmap_mode=mmap_mode)
    except FileNotFoundError:  # evicted meanwhile
        return False, None
    except (DamagedFileError, NotADumpFileError) as error:
        warnings.warn(f"dropping a damaged cache entry of {func_id}: {error}", stacklevel=4)
        try:
            store.remove(func_id, key)
        except OSError as removal:
            if not _is_read_only(removal):
                raise
        return False, None
    try:
        store.touch(func_id, key)
    except OSError as error:
        if not _is_read_only(error):
            raise
        _warn_read_only(os.path.dirname(store.function_dir(func_id)), error)
    return True, value


class MemorizedResult:
    """A result in the cache, not loaded yet (from ``call_and_shelve``). It refers to the cache
    entry, not to the function: it pickles (to another process) even for a local function."""

    def __init__(self, func: MemorizedFunc, key: str) -> None:
        self.memory = func.memory
        self.func_id = func.func_id
        self.key = key
        self.mmap_mode = func.mmap_mode

    def __reduce__(self) -> tuple:
        return _memorized_result, (self.memory, self.func_id, self.key, self.mmap_mode)

    @property
    def _store(self) -> _core.Store:
        store = self.memory.store
        assert store is not None
        return store

    def get(self) -> Any:
        found, value = (False, None)
        if self._store.contains(self.func_id, self.key):
            found, value = _read_entry(self._store, self.func_id, self.key, self.mmap_mode)
        if not found:
            raise KeyError(f"the result of {self.func_id} (entry {self.key}) is no longer cached")
        return value

    def clear(self) -> None:
        self._store.remove(self.func_id, self.key)

    def __repr__(self) -> str:
        return f"MemorizedResult({self.func_id}, {self.key})"


def _memorized_result(memory: Memory, func_id: str, key: str, mmap_mode: str | None) -> MemorizedResult:
    result = MemorizedResult.__new__(MemorizedResult)
    result.memory, result.func_id, result.key, result.mmap_mode = memory, func_id, key, mmap_mode
    return result


class NotMemorizedResult:
    """``call_and_shelve`` of a Memory without location: the value, held in memory (after
    ``clear``, ``get`` raises ``KeyError``, as for a cleared cache entry)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.valid = True

    def get(self) -> Any:
        if not self.valid:
            raise KeyError("no value stored: this result was cleared")
        return self.value

    def clear(self) -> None:
        self.value = None
        self.valid = False


class NotMemorizedFunc(Generic[_P, _R]):
    """``Memory(None).cache(f)``: calls ``f`` every time."""

    def __init__(self, func: Callable[_P, _R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self.func(*args, **kwargs)

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> NotMemorizedResult:
        return NotMemorizedResult(self.func(*args, **kwargs))

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        """``func(*args, **kwargs)`` and (no) metadata, as ``MemorizedFunc.call``."""
        return self.func(*args, **kwargs), {}

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def clear(self, warn: bool = True) -> None:
        pass


class MemorizedFunc(Generic[_P, _R]):
    """A function whose results are cached on disk (made by ``Memory.cache``); calling it has
    the function's own signature and result type."""

    def __init__(
        self,
        func: Callable[_P, _R],
        memory: Memory,
        ignore: list[str],
        verbose: int,
        mmap_mode: str | None,
        cache_validation_callback: Callable[[dict], bool] | None,
    ) -> None:
        self.func = func
        self.memory = memory
        self.ignore = list(ignore)
        self.verbose = verbose
        self.mmap_mode = mmap_mode
        self.cache_validation_callback = cache_validation_callback
        self.func_id = _function_id(func)
        self._signature = inspect.signature(func)
        unknown = [name for name in self.ignore if name not in self._signature.parameters]
        if unknown:
            raise InvalidParameterError(
                compose_message(
                    f"ignore={self.ignore!r} names {unknown!r}, which {func.__name__}() does not take.",
                    f"its arguments are {list(self._signature.parameters)}",
                ),
                code="FJ201",
            )
        self._code_checked = False
        #: The cache location cannot be written: serve what is there, store nothing.
        self._read_only = False
        #: The code changed and the stale entries could not be cleared: serve and store nothing.
        self._stale = False
        functools.update_wrapper(self, func)

    def __reduce__(self) -> tuple:
        return (
            MemorizedFunc,
            (self.func, self.memory, self.ignore, self.verbose, self.mmap_mode, self.cache_validation_callback),
        )

    @property
    def _store(self) -> _core.Store:
        store = self.memory.store
        assert store is not None
        return store

    def _key(self, args: tuple, kwargs: dict) -> str:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            self._explain_keyword_only(args)
            raise
        bound.apply_defaults()
        arguments = {name: value for name, value in bound.arguments.items() if name not in self.ignore}
        return content_hash(arguments)

    def _explain_keyword_only(self, args: tuple) -> None:
        """A keyword-only parameter passed by position: ``ValueError`` naming it, as joblib."""
        parameters = list(self._signature.parameters.values())
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
            return
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword_only = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if keyword_only and len(args) > len(positional):
            name = keyword_only[min(len(args) - len(positional), len(keyword_only)) - 1]
            raise InvalidParameterError(
                compose_message(
                    f"Keyword-only parameter {name!r} was passed as positional parameter to {self.func_id}.",
                    f"pass it by name: {name}=...",
                ),
                code="FJ201",
            )

    def _check_code(self) -> None:
        """Drop this function's cache if its code changed since the entries were made."""
        if self._code_checked:
            return
        code = _function_code(self.func)
        stored = self._store.code_version(self.func_id)
        if stored != code:
            if stored is not None and self.verbose:
                print(f"[Memory] {self.func_id}: the code changed, clearing its cache")
            try:
                if stored is not None:
                    self._store.clear(self.func_id)
                self._store.set_code_version(self.func_id, code)
            except OSError as error:
                if not _is_read_only(error):
                    raise
                _warn_read_only(self._store_location, error)
                # Stale entries of another version of the code must not be served.
                self._read_only = stored is None
                self._stale = stored is not None
        self._code_checked = True

    def _metadata(self, key: str) -> dict:
        """What is recorded with an entry ("duration", "time"); {} when unreadable."""
        entry = self._store.entry_dir(self.func_id, key)
        try:
            with open(os.path.join(entry, _METADATA), encoding="utf-8") as handle:
                metadata = json.load(handle)
        except (OSError, ValueError):
            return {}
        return metadata if isinstance(metadata, dict) else {}

    def _valid(self, key: str) -> bool:
        """Whether ``cache_validation_callback`` accepts the cached entry ``key``."""
        if self.cache_validation_callback is None:
            return True
        return bool(self.cache_validation_callback(self._metadata(key)))

    @property
    def _store_location(self) -> str:
        return os.path.dirname(self._store.function_dir(self.func_id))

    def _load(self, key: str) -> tuple[bool, Any]:
        if self._stale or not self._store.contains(self.func_id, key) or not self._valid(key):
            return False, None
        return _read_entry(self._store, self.func_id, key, self.mmap_mode)

    def _save(self, key: str, value: Any, duration: float) -> bool:
        """Store a result; whether it was stored. A cache is an optimisation: a folder removed
        meanwhile by another process's ``clear`` or a read-only location means the result is
        not stored, never that the call fails."""
        if self._read_only or self._stale:
            return False
        store = self._store
        try:
            temporary = store.begin(self.func_id, key)
        except OSError as error:
            if not _is_read_only(error):
                raise
            _warn_read_only(self._store_location, error)
            return False
        try:
            dump(value, os.path.join(temporary, _OUTPUT), compress=self.memory.compress)
            with open(os.path.join(temporary, _METADATA), "w", encoding="utf-8") as handle:
                json.dump({"duration": duration, "time": time.time()}, handle)
        except FileNotFoundError:  # the temporary folder went with a concurrent clear()
            return False
        except Exception as error:
            store.abandon(temporary)
            warnings.warn(
                f"the result of {self.func_id} was not cached: {type(error).__name__}: {error}",
                stacklevel=3,
            )
            return False
        committed = store.commit(self.func_id, key, temporary)
        if self.memory.bytes_limit is not None:
            store.reduce_size(self.memory.bytes_limit, None, None)
        return committed

    def _call(self, key: str, args: tuple, kwargs: dict) -> Any:
        if self.verbose:
            print(f"[Memory] calling {self.func_id}")
        start = time.perf_counter()
        value = self.func(*args, **kwargs)
        if self._save(key, value, time.perf_counter() - start) and self.mmap_mode is not None:
            # As joblib: with mmap_mode, the first call returns what later calls will (arrays
            # mapped from the cache, read-only under "r"), not the function's own objects.
            found, stored = self._load(key)
            if found:
                return stored
        return value

    def _compute_or_load(self, args: tuple, kwargs: dict) -> tuple[str, Any]:
        try:
            self._check_code()
        except OSError as error:  # the location itself cannot be created: compute only
            if not _is_read_only(error):
                raise
            _warn_read_only(os.fspath(self.memory.location or ""), error)
            self._code_checked = self._read_only = self._stale = True
        key = self._key(args, kwargs)
        if self.verbose >= 20:
            _LOG.info("Querying %s with signature (%s)", self.func_id, describe_arguments(args, kwargs))
        found, value = self._load(key)
        if found:
            return key, value
        if self.memory.location is not None:
            _tell_of_joblib_cache(self.memory.location, self.func, self.func_id)
        if self.verbose > 10:
            _LOG.info("Computing %s, argument hash %s, in %s", self.func_id, key, self._store_location)
        lock = None
        if not (self._read_only or self._stale):
            try:
                lock = self._store.lock(self.func_id, key, LOCK_WAIT)
            except OSError as error:
                if not _is_read_only(error):
                    raise
                _warn_read_only(self._store_location, error)
                self._read_only = True
        try:
            found, value = self._load(key)  # computed by another process while we waited?
            if found:
                return key, value
            return key, self._call(key, args, kwargs)
        finally:
            if lock is not None:
                lock.release()

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._compute_or_load(args, kwargs)[1]  # type: ignore[no-any-return]

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult:
        """Compute (or find) the result, and return a reference to it in the cache."""
        key, _ = self._compute_or_load(args, kwargs)
        return MemorizedResult(self, key)

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the result of this call is cached and valid (``cache_validation_callback``
        says yes), without computing or loading it."""
        self._check_code()
        key = self._key(args, kwargs)
        if self._stale or not self._store.contains(self.func_id, key):
            return False
        return self._valid(key)

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        """Run the function even if its result is cached, store the result, and return it with
        its metadata (``duration``, ``time``), as joblib's ``MemorizedFunc.call``."""
        self._check_code()
        key = self._key(args, kwargs)
        value = self._call(key, args, kwargs)
        return value, self._metadata(key)

    def clear(self, warn: bool = True) -> None:
        """Remove this function's cached results."""
        self._store.clear(self.func_id)
        self._code_checked = False
        self._stale = False

    def __repr__(self) -> str:
        return f"MemorizedFunc(func={self.func!r}, location={self.memory.location!r})"
