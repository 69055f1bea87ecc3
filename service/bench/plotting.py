"""Small plot helpers shared by the benchmarks: a line plot and a grouped bar plot saved as PNG,
and stacked axes for a figure of panels. This is the one module that imports matplotlib (the
``bench`` extra); the benchmarks import it where they draw, so they run without it.

They use matplotlib's object API with the Agg canvas (``matplotlib.figure.Figure``), so they
never touch pyplot's global state or need a display. Missing values are NaN (a gap in a line,
no bar).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MARKERS = "osD^v<>pPX*h"


def _finish(
    fig: Figure,
    ax,
    path: str | Path,
    *,
    title: str | None,
    xlabel: str,
    ylabel: str,
    hline: float | None,
    legend: bool,
    legend_outside: bool = False,
) -> Path:
    if hline is not None:
        ax.axhline(hline, color="0.3", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if legend and legend_outside:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif legend:
        ax.legend(
            fontsize="small", ncol=2 if len(ax.get_legend_handles_labels()[1]) > 6 else 1, loc="best", framealpha=0.85
        )
    return save_figure(fig, path)


def stacked_axes(rows: int, figsize: tuple[float, float]) -> tuple[Figure, list]:
    """A figure of ``rows`` axes stacked vertically, for figures the two helpers below do not
    draw; save it with ``save_figure``."""
    fig = Figure(figsize=figsize)
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Lay out ``fig`` and write it as PNG to ``path`` (parents created). Returns the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=dpi)
    return out


def save_line_plot(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    hline: float | None = None,
    colors: Mapping[str, str] | None = None,
    figsize: tuple[float, float] = (7.0, 4.5),
    x_at_points: bool = False,
) -> Path:
    """One line per series over the shared ``x`` (each series aligned with ``x``; NaN = no
    point; an all-NaN series is left out). ``colors``: optional matplotlib color per series
    label (keeps one color per policy across figures); ``x_at_points``: x ticks at the x values
    only, labelled plainly (a few measured points on a log axis). Returns the written PNG path."""
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    xs = np.asarray(x, dtype=np.float64)
    for i, (label, ys) in enumerate(series.items()):
        y = np.asarray(ys, dtype=np.float64)
        if y.shape != xs.shape:
            raise ValueError(f"series {label!r} has {y.size} values for {xs.size} x values")
        ok = np.isfinite(y)
        if not ok.any():
            continue
        ax.plot(
            xs[ok],
            y[ok],
            marker=_MARKERS[i % len(_MARKERS)],
            markersize=4,
            linewidth=1.2,
            label=label,
            color=(colors or {}).get(label),
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if x_at_points:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.set_xticks([], minor=True)
    return _finish(fig, ax, path, title=title, xlabel=xlabel, ylabel=ylabel, hline=hline, legend=bool(series))


def save_bar_plot(
    path: str | Path,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
    hline: float | None = None,
    ylim: tuple[float, float] | None = None,
    colors: Mapping[str, str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Path:
    """Grouped bars: one group per category, one bar per series (aligned with ``categories``;
    NaN = no bar; an all-NaN series is left out). ``colors``: optional color per series label.
    Returns the written PNG path."""
    for label, vals in series.items():
        if len(vals) != len(categories):
            raise ValueError(f"series {label!r} has {len(vals)} values for {len(categories)} categories")
    series = {k: v for k, v in series.items() if np.isfinite(np.asarray(v, dtype=np.float64)).any()}
    n_cat, n_ser = len(categories), max(len(series), 1)
    fig = Figure(figsize=figsize or (min(16.0, max(7.0, 0.14 * n_cat * n_ser + 3.0)), 4.8))
    ax = fig.add_subplot()
    pos = np.arange(n_cat, dtype=np.float64)
    width = 0.8 / n_ser
    for i, (label, vals) in enumerate(series.items()):
        v = np.asarray(vals, dtype=np.float64)
        ax.bar(pos + (i - (n_ser - 1) / 2) * width, v, width=width, label=label, color=(colors or {}).get(label))
    ax.set_xticks(pos)
    # rotate the labels only when their longest line does not fit the group's width
    longest = max((len(line) for c in categories for line in str(c).splitlines()), default=0)
    rotate = longest * 5.0 > fig.get_figwidth() * 72 * 0.8 / max(n_cat, 1)
    ax.set_xticklabels(
        list(categories), fontsize="small", rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    return _finish(
        fig, ax, path, title=title, xlabel=xlabel, ylabel=ylabel, hline=hline, legend=bool(series), legend_outside=True
    )
