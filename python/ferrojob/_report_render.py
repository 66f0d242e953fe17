"""How a ``RunReport`` looks: a short text summary, an SVG timeline (one row per worker, batches
as bars coloured by what the time went to), a histogram of task durations, and one
self-contained HTML page with all of it (no script, no font, nothing fetched).
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape
from typing import TYPE_CHECKING

from ._advice import seconds, size

if TYPE_CHECKING:
    from .report import RunReport

#: What the bars' colours mean.
COLOURS = {
    "compute": "#4e79a7",  # running tasks
    "transfer": "#f28e2b",  # unpickling arguments, pickling results (in the worker)
    "waiting": "#bab0ac",  # submitted, not yet started: queued, or on its way
    "failed": "#e15759",  # crashes, timeouts, failed batches
}
_EVENT_MARKS = {"started": "#59a14f", "recycled": "#b07aa1", "retired": "#9c755f", "exited": "#9c755f"}
_LOSSES = ("crashed", "timeout", "killed")


def text(report: RunReport) -> str:
    """A few lines: the call, the workers, where the time went, the data, events, advice."""
    lines = [
        f"ferrojob run report: {report.n_tasks:,} tasks in {report.n_batches:,} batches on "
        f"{report.n_workers} workers ({report.backend}), {seconds(report.wall)}"
    ]
    if report.workers:
        busy = sum(usage.busy for usage in report.workers.values())
        shares = ", ".join(
            f"{name} {seconds(usage.busy)} busy / {seconds(usage.idle)} idle" for name, usage in report.workers.items()
        )
        lines.append(
            f"  workers  {report.utilisation:.0%} of their time computing, {seconds(busy)} busy in all: {shares}"
        )
    lines.append(
        f"  time     tasks {seconds(report.compute_seconds)}, pickling {seconds(report.pickle_seconds)}, "
        f"unpickling {seconds(report.unpickle_seconds)}, reading the input {seconds(report.input_seconds)}"
    )
    lines.append(
        f"  data     to workers {size(report.bytes_to_workers)} ({size(report.bytes_shared_to_workers)} "
        f"in shared memory, {size(report.bytes_copied_to_workers)} copied there), from workers "
        f"{size(report.bytes_from_workers)} ({size(report.bytes_shared_from_workers)} in shared memory)"
    )
    if report.batch_sizes:
        ordered = sorted(report.batch_sizes)
        lines.append(
            f"  batches  {ordered[0]}..{ordered[-1]} tasks (median {ordered[len(ordered) // 2]}), "
            f"task durations {_duration_range(report)}"
        )
    if report.n_batches_dropped:
        lines.append(
            f"  kept     the newest {len(report.batches):,} batches: the oldest {report.n_batches_dropped:,} "
            "are left out of the times and bytes above"
        )
    if report.events:
        counts = Counter(event.what for event in report.events)
        lines.append("  events   " + ", ".join(f"{count} {what}" for what, count in counts.items()))
    for sentence in report.advice:
        lines.append(f"  advice   {sentence}")
    return "\n".join(lines) + "\n"


def _duration_range(report: RunReport) -> str:
    durations = report.task_seconds()
    if not durations:
        return "unknown"
    durations.sort()
    return f"{seconds(durations[0])}..{seconds(durations[-1])} (median {seconds(durations[len(durations) // 2])})"


# -- the timeline ---------------------------------------------------------------------------

_WIDTH, _LEFT, _RIGHT, _TOP, _ROW, _GAP = 980, 120, 20, 30, 22, 8


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / ticks
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= raw)


def svg_timeline(report: RunReport) -> str:
    """One row per worker; each batch a bar: grey while queued, orange while the worker unpickled
    its arguments and pickled its results, blue while its tasks ran, red when it failed; worker
    events as marks (red crosses for crashes and timeouts)."""
    rows = list(report.workers)
    for event in report.events:
        if event.worker not in rows:
            rows.append(event.worker)
    span = max(report.wall, 1e-6)
    plot = _WIDTH - _LEFT - _RIGHT
    height = _TOP + max(len(rows), 1) * (_ROW + _GAP) + 30

    def x(at: float) -> float:
        return _LEFT + max(0.0, min(at - report.started, span)) / span * plot

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<text x="{_LEFT}" y="16" font-weight="bold">{escape(_title(report))}</text>',
    ]
    step = _nice_step(span)
    axis_y = _TOP + len(rows) * (_ROW + _GAP)
    tick = 0.0
    while tick <= span + 1e-12:
        at = _LEFT + tick / span * plot
        out.append(f'<line x1="{at:.1f}" y1="{_TOP - 4}" x2="{at:.1f}" y2="{axis_y}" stroke="#e8e8e8"/>')
        out.append(
            f'<text x="{at:.1f}" y="{axis_y + 16}" text-anchor="middle" fill="#555">{seconds(tick) if tick else "0"}</text>'
        )
        tick += step
    row_of = {name: index for index, name in enumerate(rows)}
    for name, index in row_of.items():
        y = _TOP + index * (_ROW + _GAP)
        out.append(f'<text x="{_LEFT - 8}" y="{y + _ROW * 0.7:.1f}" text-anchor="end">{escape(name)}</text>')
    for record in report.batches:
        y = _TOP + row_of[record.worker] * (_ROW + _GAP)
        tasks = (
            f"task {record.first_task}"
            if record.n_tasks == 1
            else f"tasks {record.first_task}..{record.first_task + record.n_tasks - 1}"
        )
        tip = (
            f"{tasks}: {record.outcome}; queued {seconds(max(record.started - record.submitted, 0))}, "
            f"unpickling {seconds(record.load_seconds)}, running {seconds(record.run_seconds)}, "
            f"pickling {seconds(record.dump_seconds)}"
        )
        if record.started > record.submitted:  # a band under the row: batches queue while others run
            out.append(
                f'<rect x="{x(record.submitted):.2f}" y="{y + _ROW + 1}" width="{x(record.started) - x(record.submitted):.2f}" '
                f'height="3" fill="{COLOURS["waiting"]}" opacity="0.6"><title>{escape(tip)}</title></rect>'
            )
        if record.outcome == "done":
            parts = [
                ("transfer", record.load_seconds),
                ("compute", record.run_seconds),
                ("transfer", record.dump_seconds),
            ]
        else:  # failed, or lost with its worker: one red bar over the time it had
            parts = [("failed", record.ended - record.started)]
        at = record.started
        for part, length in parts:
            colour = COLOURS[part]
            left, right = x(at), x(at + length)
            if right - left >= 0.05:
                out.append(
                    f'<rect x="{left:.2f}" y="{y}" width="{right - left:.2f}" height="{_ROW}" fill="{colour}" '
                    f'stroke="#fff" stroke-width="0.4">'
                    f"<title>{escape(tip)}</title></rect>"
                )
            at += length
    for event in report.events:
        y = _TOP + row_of[event.worker] * (_ROW + _GAP)
        at = x(event.at)
        label = escape(f"{event.worker} {event.what}{': ' + event.detail if event.detail else ''}")
        if event.what in _LOSSES:
            out.append(
                f'<path d="M{at - 6:.1f},{y + 3} l12,{_ROW - 6} m0,-{_ROW - 6} l-12,{_ROW - 6}" '
                f'stroke="{COLOURS["failed"]}" stroke-width="3"><title>{label}</title></path>'
            )
        else:
            colour = _EVENT_MARKS.get(event.what, "#555")
            out.append(
                f'<line x1="{at:.1f}" y1="{y - 3}" x2="{at:.1f}" y2="{y + _ROW + 3}" stroke="{colour}" '
                f'stroke-width="2"><title>{label}</title></line>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(report: RunReport) -> str:
    return (
        f"{report.n_tasks:,} tasks, {report.n_batches:,} batches, {report.n_workers} workers "
        f"({report.backend}): {seconds(report.wall)}"
    )


def svg_histogram(report: RunReport) -> str:
    """Task durations on a log scale (each batch's tasks counted at its mean)."""
    durations = [value for value in report.task_seconds() if value > 0]
    width, height, left, bottom = 480, 220, 50, 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    if not durations:
        out.append(f'<text x="{left}" y="{height / 2}">no task durations recorded</text></svg>')
        return "\n".join(out) + "\n"
    low, high = math.log10(min(durations)), math.log10(max(durations))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    n_bins = 24
    counts = [0] * n_bins
    for value in durations:
        counts[min(int((math.log10(value) - low) / (high - low) * n_bins), n_bins - 1)] += 1
    tallest = max(counts)
    plot_w, plot_h = width - left - 10, height - bottom - 10
    bar = plot_w / n_bins
    for index, count in enumerate(counts):
        if count:
            h = count / tallest * plot_h
            out.append(
                f'<rect x="{left + index * bar:.1f}" y="{10 + plot_h - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS["compute"]}"><title>{count} tasks</title></rect>'
            )
    for fraction in (0.0, 0.5, 1.0):
        value = 10 ** (low + fraction * (high - low))
        out.append(
            f'<text x="{left + fraction * plot_w:.1f}" y="{height - bottom + 16}" text-anchor="middle">{seconds(value)}</text>'
        )
    out.append(f'<text x="{left}" y="{height - 6}">task duration (log scale); tallest bar: {tallest:,} tasks</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def html(report: RunReport) -> str:
    """The whole report as one page that needs nothing else."""
    rows = [
        ("wall time", seconds(report.wall)),
        ("tasks / batches", f"{report.n_tasks:,} / {report.n_batches:,}"),
        ("workers computing", f"{report.utilisation:.0%} of their time"),
        ("task time (all workers)", seconds(report.compute_seconds)),
        ("pickling / unpickling", f"{seconds(report.pickle_seconds)} / {seconds(report.unpickle_seconds)}"),
        ("reading the input", seconds(report.input_seconds)),
        ("to workers", f"{size(report.bytes_to_workers)} ({size(report.bytes_shared_to_workers)} shared memory, "
                       f"{size(report.bytes_copied_to_workers)} copied)"),
        ("from workers", f"{size(report.bytes_from_workers)} ({size(report.bytes_shared_from_workers)} shared memory)"),
        ("task durations", _duration_range(report)),
    ]  # fmt: skip
    numbers = "\n".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    workers = "\n".join(
        f"<tr><td>{escape(name)}</td><td>{usage.n_batches}</td><td>{seconds(usage.busy)}</td><td>{seconds(usage.idle)}</td></tr>"
        for name, usage in report.workers.items()
    )
    events = "\n".join(
        f"<tr><td>{seconds(max(event.at - report.started, 0.0))}</td><td>{escape(event.worker)}</td>"
        f"<td>{escape(event.what)}</td><td>{escape(event.detail)}</td></tr>"
        for event in report.events
    )
    advice = "\n".join(f"<li>{escape(sentence)}</li>" for sentence in report.advice) or "<li>nothing stands out</li>"
    legend = " ".join(
        f'<span class="key" style="background:{colour}"></span>{escape(name)}' for name, colour in COLOURS.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ferrojob run report: {escape(_title(report))}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eee; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }}
.advice li {{ margin: 4px 0; }}
</style></head><body>
<h1>ferrojob run report</h1>
<p>{escape(_title(report))}</p>
<h2>Advice</h2><ul class="advice">{advice}</ul>
<h2>Timeline</h2><p>{legend}; marks: worker started (green), recycled (purple), crashed or timed out (red cross)</p>
{svg_timeline(report)}
<h2>Numbers</h2><table>{numbers}</table>
<h2>Task durations</h2>
{svg_histogram(report)}
<h2>Workers</h2><table><tr><th>worker</th><th>batches</th><th>busy</th><th>idle</th></tr>{workers}</table>
<h2>Worker events</h2><table><tr><th>at</th><th>worker</th><th>what</th><th>detail</th></tr>{events}</table>
</body></html>
"""
