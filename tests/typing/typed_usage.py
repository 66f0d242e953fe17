"""What a type checker sees of ferrojob's public API (checked by mypy in .ci/run, not run).

Each ``assert_type`` is a claim about the types a user gets: results keep their function's type,
and misuse is an error the checker reports (lines marked ``type: ignore[...]`` must stay errors:
mypy's ``warn_unused_ignores`` fails the check if one stops being an error).
"""

from __future__ import annotations

import concurrent.futures
from typing import assert_type

from ferrojob import Executor, Memory, Parallel, RunReport, delayed


def square(x: int) -> float:
    return float(x * x)


def use_executor() -> None:
    with Executor(max_workers=2) as executor:
        future = executor.submit(square, 3)
        assert_type(future, concurrent.futures.Future[float])
        assert_type(future.result(), float)
        executor.submit(square, "three")  # type: ignore[arg-type]


def use_memory(location: str) -> None:
    memory = Memory(location)
    cached = memory.cache(square)
    assert_type(cached(2), float)
    cached("two")  # type: ignore[arg-type]

    @memory.cache(ignore=["verbose"])
    def fit(data: list[int], verbose: bool = False) -> int:
        return sum(data)

    assert_type(fit([1, 2]), int)


def use_parallel() -> None:
    Parallel(n_jobs=2, backend="loky", return_as="generator", prefer="threads", batch_size="auto")
    Parallel(n_jobs=None, return_as="lazy")  # type: ignore[arg-type]
    Parallel(prefer="gpu")  # type: ignore[arg-type]
    Parallel(n_jobs=2)(delayed(square)(x) for x in range(3))


def use_run_report() -> None:
    parallel = Parallel(n_jobs=2)
    parallel(delayed(square)(x) for x in range(3))
    report = parallel.last_report
    assert_type(report, RunReport | None)
    if report is not None:
        assert_type(report.wall, float)
        assert_type(report.batch_sizes, list[int])
        assert_type(report.advice, list[str])
        report.save("run.html")
        report.save(42)  # type: ignore[arg-type]
