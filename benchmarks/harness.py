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


#: Every target checked in this run, as (scenario, verdict line), for the summary at the end.
VERDICTS: list[tuple[str, str]] = []


def record(title: str, timings: dict[str, float], baseline: str = "ferrojob") -> None:
    """Keep one scenario's timings (seconds) for ``save_results``."""
    RESULTS.append({"title": title, "baseline": baseline, "seconds": dict(timings)})


def save_results() -> Path | None:
    """With ``--save`` on the command line (or FERROJOB_BENCH_SAVE=1): merge this run's
    scenarios into the tracked ``benchmarks/results/<script>.json`` (by title), for ``plot.py``.
    Otherwise nothing is written: a run to look at the numbers leaves the tree as it was."""
    if "--save" not in sys.argv and os.environ.get("FERROJOB_BENCH_SAVE") != "1":
        return None
    path = Path(__file__).parent / "results" / f"{Path(sys.argv[0]).stem}.json"
    path.parent.mkdir(exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else []
    titles = {entry["title"] for entry in RESULTS}
    merged = [entry for entry in previous if entry["title"] not in titles] + RESULTS
    path.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"\nresults saved to {path}")
    return path


def describe_target(peer: str, at_least: float) -> str:
    """A target in words: ferrojob at least ``at_least`` times as fast as ``peer``."""
    if at_least >= 1:
        return f">= {at_least:g}x {peer}"
    return f"<= {1 / at_least:.3g}x the time of {peer}"


def report(
    title: str,
    timings: dict[str, float],
    baseline: str = "ferrojob",
    note: str = "",
    targets: dict[str, float] | None = None,
) -> None:
    """Print one scenario: each library's time and how many times slower it is than ferrojob.

    ``targets``: for a peer (a key of ``timings``), how many times as fast as it ferrojob must
    be (0.5: at most twice its time); each gets a verdict line, and the run ends with them all."""
    record(title, timings, baseline)
    targets = targets or {}
    goals = ", ".join(describe_target(peer, at_least) for peer, at_least in targets.items())
    notes = "; ".join(part for part in (f"target: {goals}" if goals else "", note) if part)
    print(f"\n{title}" + (f"  ({notes})" if notes else ""))
    ours = timings[baseline]
    for name, seconds in timings.items():
        if name == baseline:
            ratio = ""
        elif seconds >= ours:
            ratio = f"   ferrojob {seconds / ours:6.2f}x faster"
        else:
            ratio = f"   ferrojob {ours / seconds:6.2f}x slower"
        print(f"  {name:<34} {seconds * 1000:9.1f} ms{ratio}")
    for peer, at_least in targets.items():
        verdict(title, describe_target(peer, at_least), timings[peer] / ours, at_least)


def verdict(title: str, target: str, achieved: float, at_least: float) -> None:
    """Print and keep the verdict on one target: ``achieved`` (a speed-up) against ``at_least``."""
    line = f"{'met   ' if achieved >= at_least else 'MISSED'} {target}: {achieved:.2f}x"
    print(f"  verdict: {line}")
    VERDICTS.append((title.split(":")[0], line))


def run_scenarios(scenarios: dict[str, Callable[[], None]], names: list[str], setting: str = "") -> None:
    """Run the named scenarios (all when none are named), after a line describing the machine."""
    names = [name for name in names if name != "--save"]
    unknown = [name for name in names if name not in scenarios]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(scenarios)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs" + (f", {setting}" if setting else ""))
    for name in names or scenarios:
        scenarios[name]()
    print_verdicts()
    save_results()


def print_verdicts() -> None:
    """Every target of this run, met or missed, in one place."""
    if VERDICTS:
        print("\nverdicts")
        for scenario, line in VERDICTS:
            print(f"  {scenario:<16} {line}")
