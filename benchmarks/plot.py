"""Draw docs/benchmarks.svg from the results the benchmarks saved in benchmarks/results/.

    python benchmarks/plot.py

One bar per scenario: how many times faster ferrojob ran than joblib (log scale).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).parent
OUTPUT = HERE.parent / "docs" / "benchmarks.svg"
ROW, LABEL_WIDTH, BAR_WIDTH, TOP = 26, 520, 380, 40
SCALE = (0.5, 500.0)  # x axis, in "times faster"


def speedups() -> list[tuple[str, float]]:
    rows = []
    for path in sorted((HERE / "results").glob("*.json")):
        for entry in json.loads(path.read_text()):
            seconds = entry["seconds"]
            joblib = next((name for name in seconds if name.startswith("joblib")), None)
            if joblib is not None:
                suite = path.stem.removeprefix("bench_")
                rows.append((f"{suite} · {entry['title']}", seconds[joblib] / seconds[entry["baseline"]]))
    return rows


def x_of(ratio: float) -> float:
    low, high = (math.log10(v) for v in SCALE)
    clamped = min(max(math.log10(ratio), low), high)
    return LABEL_WIDTH + BAR_WIDTH * (clamped - low) / (high - low)


def svg(rows: list[tuple[str, float]]) -> str:
    height = TOP + ROW * len(rows) + 40
    width = LABEL_WIDTH + BAR_WIDTH + 90
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<text x="10" y="20" font-size="14" font-weight="bold">ferrojob vs joblib: times faster '
        "(log scale, 2-core machine)</text>",
    ]
    for tick in (1, 10, 100):
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{height - 30}" stroke="#bbb"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 15}" text-anchor="middle">{tick}×</text>')
    for i, (title, ratio) in enumerate(rows):
        y = TOP + i * ROW
        label = title if len(title) <= 80 else title[:77] + "..."
        parts.append(f'<text x="{LABEL_WIDTH - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        start, end = x_of(1.0), x_of(ratio)
        colour = "#2a7ab8" if ratio >= 1 else "#c0504d"
        parts.append(
            f'<rect x="{min(start, end):.1f}" y="{y + 4}" width="{abs(end - start):.1f}" height="{ROW - 8}" '
            f'fill="{colour}"/>'
        )
        parts.append(f'<text x="{max(start, end) + 5:.1f}" y="{y + 15}">{ratio:.2f}×</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main() -> None:
    rows = speedups()
    if not rows:
        raise SystemExit("no results yet: run the benchmarks first (they save benchmarks/results/*.json)")
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(svg(rows))
    print(f"wrote {OUTPUT} ({len(rows)} scenarios)")


if __name__ == "__main__":
    main()
