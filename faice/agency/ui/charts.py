"""Charts as SVG made on the server: no script, no library, nothing to load from elsewhere.

Every text that reaches a chart (metric and parameter names, values, batch ids) is escaped;
styles come from classes in the page's own stylesheet (the Content-Security-Policy allows no
inline style). Thousands of points are one path each, so a 10,000-batch scatter stays small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 320  # the large chart; small ones (scatters, a batch's metrics) are 440 × 260
SMALL = (440, 260)
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44


@dataclass
class Curve:
    label: str
    points: Sequence[Sequence[Any]]  # [step, value]
    best: bool = False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


class _Axes:
    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, log_x: bool = False,
                 size: tuple[int, int] = (WIDTH, HEIGHT), pad: float = 0.0):
        self.width, self.height = size
        self.log_x = log_x
        tx = [math.log10(x) for x in xs] if log_x else list(xs)
        self.x0, self.x1 = min(tx), max(tx)
        self.y0, self.y1 = min(ys), max(ys)
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 == self.y0:
            half = abs(self.y0) * 0.1 or 1.0
            self.y0, self.y1 = self.y0 - half, self.y1 + half
        if pad:  # room for dots at the edges
            dx, dy = (self.x1 - self.x0) * pad, (self.y1 - self.y0) * pad
            self.x0, self.x1, self.y0, self.y1 = self.x0 - dx, self.x1 + dx, self.y0 - dy, self.y1 + dy

    def x(self, value: float) -> float:
        value = math.log10(value) if self.log_x else value
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return self.height - BOTTOM - (value - self.y0) / (self.y1 - self.y0) * (self.height - TOP - BOTTOM)

    def frame(self, x_label: str, y_label: str, x_names: Sequence[str] | None = None) -> list[str]:
        out = [f'<line class="axis" x1="{LEFT}" y1="{self.height - BOTTOM}" x2="{self.width - RIGHT}" y2="{self.height - BOTTOM}"/>',
               f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{self.height - BOTTOM}"/>']
        for value in _ticks(self.y0, self.y1):
            y = self.y(value)
            out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{self.width - RIGHT}" y2="{y:.1f}"/>'
                       f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(value)}</text>')
        if x_names is not None:
            every = max(1, len(x_names) // 8)
            for i, name in enumerate(x_names):
                if i % every == 0:
                    out.append(f'<text class="tick" x="{self.x(i):.1f}" y="{self.height - BOTTOM + 16}" '
                               f'text-anchor="middle">{escape(name[:16])}</text>')
        else:
            low, high = (self.x0, self.x1)
            for value in _ticks(low, high):
                shown = 10 ** value if self.log_x else value
                out.append(f'<text class="tick" x="{self.x(shown):.1f}" y="{self.height - BOTTOM + 16}" '
                           f'text-anchor="middle">{_label(shown)}</text>')
        out.append(f'<text class="axis-label" x="{(LEFT + self.width - RIGHT) / 2}" y="{self.height - 6}" '
                   f'text-anchor="middle">{escape(x_label)}{" (log)" if self.log_x else ""}</text>')
        out.append(f'<text class="axis-label" x="12" y="{(TOP + self.height - BOTTOM) / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {(TOP + self.height - BOTTOM) / 2})">{escape(y_label)}</text>')
        return out


def _svg(title: str, body: list[str], description: str, size: tuple[int, int]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {size[0]} {size[1]}" width="{size[0]}" height="{size[1]}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title><desc>{escape(description)}</desc>'
        + "".join(body) + "</svg>")


def line_chart(curves: Sequence[Curve], x_label: str, y_label: str, title: str,
               size: tuple[int, int] = (WIDTH, HEIGHT)) -> Markup | None:
    """All ``curves`` on one chart; the best one drawn last, thick and marked."""
    drawn = [(c, [(float(s), float(v)) for s, v in c.points if _finite(s) and _finite(v)]) for c in curves]
    drawn = [(c, p) for c, p in drawn if p]
    if not drawn:
        return None
    axes = _Axes([s for _, p in drawn for s, _ in p], [v for _, p in drawn for _, v in p], size=size)
    body = axes.frame(x_label, y_label)
    for curve, points in sorted(drawn, key=lambda item: item[0].best):
        path = " ".join(f"{'M' if i == 0 else 'L'}{axes.x(s):.1f} {axes.y(v):.1f}" for i, (s, v) in enumerate(points))
        if len(points) == 1:
            path += "h0"  # one step: a dot
        kind = "curve best" if curve.best else "curve solo" if len(drawn) == 1 else "curve"
        body.append(f'<path class="{kind}" d="{path}"><title>{escape(curve.label)}</title></path>')
        if len(points) == 1 and not curve.best:
            body.append(f'<circle class="point" cx="{axes.x(points[0][0]):.1f}" cy="{axes.y(points[0][1]):.1f}" r="4"/>')
        if curve.best:
            s, v = points[-1]
            body.append(f'<circle class="best-mark" cx="{axes.x(s):.1f}" cy="{axes.y(v):.1f}" r="5">'
                        f'<title>best: {escape(curve.label)}</title></circle>')
    best = next((c.label for c, _ in drawn if c.best), None)
    description = f"{len(drawn)} batches" + (f"; best: {best}" if best else "")
    return _svg(title, body, description, size)


def scatter(points: Sequence[tuple[Any, float, bool, str]], x_label: str, y_label: str, title: str) -> Markup | None:
    """``(x, y, best, label)`` points; x numeric (log when it spans 100×) or categories."""
    points = [p for p in points if p[0] is not None and _finite(p[1])]
    if not points:
        return None
    numeric = all(_finite(p[0]) for p in points)
    names: list[str] | None = None
    if numeric:
        xs = [float(p[0]) for p in points]
    else:
        names = sorted({str(p[0]) for p in points})
        position = {name: i for i, name in enumerate(names)}
        xs = [float(position[str(p[0])]) for p in points]
    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 100
    axes = _Axes(xs, [float(p[1]) for p in points], log_x=log_x, size=SMALL, pad=0.04)
    body = axes.frame(x_label, y_label, names)
    dots = " ".join(f"M{axes.x(x):.1f} {axes.y(float(p[1])):.1f}h0" for x, p in zip(xs, points, strict=True))
    body.append(f'<path class="dots" d="{dots}"/>')
    for x, p in zip(xs, points, strict=True):
        if p[2]:
            body.append(f'<circle class="best-mark" cx="{axes.x(x):.1f}" cy="{axes.y(float(p[1])):.1f}" r="6">'
                        f'<title>best: {escape(p[3])}</title></circle>')
    return _svg(title, body, f"{len(points)} batches", SMALL)
