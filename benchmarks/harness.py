"""Timing and reporting helpers for the side-by-side benchmarks."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: Every scenario measured in this run: what ``save_results`` writes for ``plot.py``.
RESULTS: list[dict] = []


def measure(run: Callable[[], object], repeat: int, warm_up: bool = True) -> float:
    """Median wall time of ``repeat`` runs, in seconds (after one untimed warm-up run)."""
    if warm_up:
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record(title: str, timings: dict[str, float], baseline: str = "ferrojob") -> None:
    """Keep one scenario's timings (seconds) for ``save_results``."""
    RESULTS.append({"title": title, "baseline": baseline, "seconds": dict(timings)})


def save_results() -> Path:
    """Merge this run's scenarios into ``benchmarks/results/<script>.json`` (by title)."""
    path = Path(__file__).parent / "results" / f"{Path(sys.argv[0]).stem}.json"
    path.parent.mkdir(exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else []
    titles = {entry["title"] for entry in RESULTS}
    merged = [entry for entry in previous if entry["title"] not in titles] + RESULTS
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


def report(title: str, timings: dict[str, float], baseline: str = "ferrojob", note: str = "") -> None:
    """Print one scenario: each library's time and how many times slower it is than ferrojob."""
    record(title, timings, baseline)
    print(f"\n{title}" + (f"  ({note})" if note else ""))
    ours = timings[baseline]
    for name, seconds in timings.items():
        if name == baseline:
            ratio = ""
        elif seconds >= ours:
            ratio = f"   ferrojob {seconds / ours:6.2f}x faster"
        else:
            ratio = f"   ferrojob {ours / seconds:6.2f}x slower"
        print(f"  {name:<34} {seconds * 1000:9.1f} ms{ratio}")


def run_scenarios(scenarios: dict[str, Callable[[], None]], names: list[str], setting: str = "") -> None:
    """Run the named scenarios (all when none are named), after a line describing the machine."""
    unknown = [name for name in names if name not in scenarios]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(scenarios)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs" + (f", {setting}" if setting else ""))
    for name in names or scenarios:
        scenarios[name]()
    save_results()
