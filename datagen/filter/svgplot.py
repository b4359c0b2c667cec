"""Tiny inline-SVG charts for the audit page: histograms, line charts, scatter plots.

Hand-written SVG instead of matplotlib: the audit draws a dozen small charts, and on a busy
2-core machine matplotlib spent seconds per figure; these take microseconds, stay sharp at
any zoom and keep the page self-contained.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np

PALETTE = ("#4a7bb7", "#e08a2c", "#2a9d55", "#b8433a", "#7a5cb0", "#555555")
W, H = 340, 220                     # chart size, px
L, R, T, B = 46, 12, 22, 36         # margins: left, right, top, bottom


def _e(x) -> str:
    return html.escape(str(x))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** np.floor(np.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    return [float(v) for v in np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


@dataclass
class Chart:
    """One chart in data coordinates; ``svg()`` renders it with axes, ticks and a legend."""

    title: str
    xlabel: str
    ylabel: str
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    items: list[str] = field(default_factory=list)
    legend: list[tuple[str, str, str]] = field(default_factory=list)   # (label, colour, dash)

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return L + (v - lo) / ((hi - lo) or 1) * (W - L - R)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return H - B - (v - lo) / ((hi - lo) or 1) * (H - T - B)

    def line(self, xs, ys, colour: str, label: str = "", dash: str = "", marker: bool = False) -> "Chart":
        pts = [(self.x(a), self.y(b)) for a, b in zip(xs, ys) if b is not None and np.isfinite(b)]
        if pts:
            self.items.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" stroke-dasharray="{dash}" '
                              f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
            if marker:
                self.items += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="{colour}"/>' for a, b in pts]
        if label:
            self.legend.append((label, colour, dash))
        return self

    def bars(self, edges, counts, colour: str) -> "Chart":
        for a, b, c in zip(edges[:-1], edges[1:], counts):
            if c:
                y0 = self.y(c)
                self.items.append(f'<rect x="{self.x(a):.1f}" y="{y0:.1f}" width="{max(0.5, self.x(b) - self.x(a) - 0.5):.1f}" '
                                  f'height="{self.y(0) - y0:.1f}" fill="{colour}"/>')
        return self

    def vline(self, v: float, colour: str, label: str = "", dash: str = "") -> "Chart":
        if self.xlim[0] <= v <= self.xlim[1]:
            self.items.append(f'<line x1="{self.x(v):.1f}" x2="{self.x(v):.1f}" y1="{T}" y2="{H - B}" stroke="{colour}" '
                              f'stroke-width="1.6" stroke-dasharray="{dash}"/>')
        if label:
            self.legend.append((label, colour, dash))
        return self

    def point(self, x: float, y: float, colour: str, label: str = "", r: float = 5) -> "Chart":
        self.items.append(f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="{r}" fill="{colour}" stroke="#000"/>')
        if label:
            self.legend.append((label, colour, ""))
        return self

    def svg(self) -> str:
        axes = [f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="#333"/>',
                f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="#333"/>']
        for v in _ticks(*self.xlim):
            axes.append(f'<text x="{self.x(v):.1f}" y="{H - B + 13}" text-anchor="middle">{_fmt(v)}</text>')
        for v in _ticks(*self.ylim):
            axes.append(f'<line x1="{L - 3}" x2="{W - R}" y1="{self.y(v):.1f}" y2="{self.y(v):.1f}" stroke="#eee"/>'
                        f'<text x="{L - 5}" y="{self.y(v) + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
        axes.append(f'<text x="{(L + W - R) / 2}" y="{H - 4}" text-anchor="middle">{_e(self.xlabel)}</text>')
        axes.append(f'<text x="11" y="{(T + H - B) / 2}" text-anchor="middle" '
                    f'transform="rotate(-90 11 {(T + H - B) / 2})">{_e(self.ylabel)}</text>')
        axes.append(f'<text x="{L}" y="14" font-weight="bold">{_e(self.title)}</text>')
        legend = [f'<line x1="{W - R - 128}" x2="{W - R - 112}" y1="{T + 8 + 11 * i}" y2="{T + 8 + 11 * i}" '
                  f'stroke="{c}" stroke-width="2" stroke-dasharray="{d}"/>'
                  f'<text x="{W - R - 108}" y="{T + 11 + 11 * i}">{_e(lab)}</text>'
                  for i, (lab, c, d) in enumerate(self.legend)]
        return (f'<svg width="{W}" height="{H}" font-size="9" '
                f'font-family="sans-serif" class="chart">{"".join(axes)}{"".join(self.items)}{"".join(legend)}</svg>')


def histogram(values: np.ndarray, title: str, bins: int = 40, include: tuple[float, ...] = ()) -> Chart:
    """Counts of ``values`` in ``bins`` bins; the x range also covers the ``include`` marks."""
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    marks = [v for v in include if np.isfinite(v)]
    lo, hi = min([lo, *marks]), max([hi, *marks])
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return Chart(title, title, "candidates", (lo, hi), (0, max(1, counts.max()) * 1.08)).bars(edges, counts, PALETTE[0])
