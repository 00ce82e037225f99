"""Self-contained HTML pages (the build report, a run's report): one stylesheet, tables and
inline SVG line plots, nothing fetched when the page opens."""

from __future__ import annotations

import html
import math
from typing import Any

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.3em .8em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.bar{background:#4a7bd0;height:1em;display:inline-block}
.row{display:flex;gap:6px;align-items:flex-end;margin:.6em 0;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:11px;color:#555}
figure img{display:block;border:3px solid transparent;max-width:112px;max-height:112px}
figure.keep img{border-color:#2a9d4a}figure.seed img{border-color:#d08a2a}
.label{min-width:9em;font-size:12px;color:#555}
.withheld{width:106px;height:106px;border:3px solid #bbb;background:#eee;font-size:11px;
display:flex;align-items:center;justify-content:center}
pre{background:#f6f6f6;padding:.8em;font-size:12px;overflow:auto;max-height:30em}
"""
COLOURS = ("#4a7bd0", "#d08a2a", "#2a9d4a", "#b03a8a", "#777", "#c33")


def page(title: str, body: str) -> str:
    """A whole page: ``title`` as its heading, ``body`` below."""
    name = html.escape(title)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title>"
            f"<style>{STYLE}</style></head><body><h1>{name}</h1>{body}</body></html>")  # fmt: skip


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    width: int = 520,
    height: int = 220,
    log_y: bool = False,
) -> str:
    """An inline SVG of one or more (x, y) series on shared axes, a legend above."""
    points = [p for s in series.values() for p in s if not log_y or p[1] > 0]
    if not points:
        return f"<p>{html.escape(title)}: nothing logged.</p>"
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)  # noqa: E731
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(f(p[1]) for p in points), max(f(p[1]) for p in points)
    sx = lambda x: 50 + (width - 60) * (x - x0) / ((x1 - x0) or 1)  # noqa: E731
    sy = lambda y: height - 25 - (height - 50) * (f(y) - y0) / ((y1 - y0) or 1)  # noqa: E731
    lines, legend = [], []
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        kept = [p for p in values if not log_y or p[1] > 0]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept)
        lines.append(f'<polyline fill="none" stroke="{colour}" points="{path}"/>')
        legend.append(f'<tspan fill="{colour}">{html.escape(name)}</tspan> ')
    low, high = (10**y0, 10**y1) if log_y else (y0, y1)
    return (f'<svg width="{width}" height="{height}" role="img">'
            f'<text x="50" y="12" font-size="11">{html.escape(title)}: {"".join(legend)}</text>'
            f'<text x="0" y="{height - 25}" font-size="10">{low:.3g}</text>'
            f'<text x="0" y="30" font-size="10">{high:.3g}</text>'
            f'<text x="50" y="{height - 5}" font-size="10">{x0:g}</text>'
            f'<text x="{width - 50}" y="{height - 5}" font-size="10">{x1:g}</text>'
            f'{"".join(lines)}</svg>')  # fmt: skip
