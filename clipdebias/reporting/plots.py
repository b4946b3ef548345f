"""Drawing primitives for the report charts: matplotlib ``Figure`` objects, never ``pyplot``.

``Figure`` objects render with the Agg canvas when saved, so nothing here touches matplotlib's
global backend or leaks figures, and it works headless and inside notebooks alike. Per-class
panels draw *sorted curves* (class rank on x), which stay readable at 1000 classes; class names
label the axis only when there are few of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdebias.utils.atomic import atomic_write

if TYPE_CHECKING:  # matplotlib is heavy: imported only when a chart is drawn, not with this module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
"""Pixels per inch of the PNGs: a 14-inch-wide figure is 1400 px."""
PANEL_SIZE = (7.0, 5.0)
"""Inches per panel (width, height); figures put panels side by side, at most ``MAX_COLUMNS`` a row."""
MIN_WIDTH = 10.0
"""Inches: a one-panel figure is still 1000 px wide."""
MAX_COLUMNS = 2
NAMED_TICKS_MAX = 30
"""Up to this many classes, a single sorted curve labels its x axis with the class names."""
MARKERS_MAX = 40
"""Up to this many points, curves show a marker per point."""
HISTOGRAM_BINS = 40
SPIKE_RATIO = 10.0
"""A count panel switches to a log axis when its largest value exceeds this many times the mean."""

RAW_COLOR = "tab:red"
DEBIASED_COLOR = "tab:blue"
FIRST_COLOR = "tab:gray"
PALETTE = (
    "tab:blue",
    "tab:red",
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)


@dataclass(frozen=True, eq=False)
class Curve:
    """One per-class series (``values[c]`` for class ``c``; nan where undefined)."""

    label: str
    values: np.ndarray
    color: str | None = None


@dataclass(frozen=True, eq=False)
class Line:
    """One series over epochs; ``spread`` (same length as ``y``) draws a shaded band: ``y ± spread``
    on a linear axis, ``y × exp(±spread)`` on a log axis (``spread`` then being a std of ``log y``)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str | None = None
    spread: np.ndarray | None = None
    dashed: bool = False


def new_figure(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    """A figure with ``panels`` axes, ``MAX_COLUMNS`` per row, and a title."""
    from matplotlib.figure import Figure  # local: matplotlib loads only when a chart is drawn

    columns = min(panels, MAX_COLUMNS)
    rows = -(-panels // columns)
    figure = Figure(
        figsize=(max(PANEL_SIZE[0] * columns, MIN_WIDTH), PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained"
    )
    axes = list(np.atleast_1d(figure.subplots(rows, columns)).ravel())
    for extra in axes[panels:]:
        extra.remove()
    figure.suptitle(title, fontsize=13)
    return figure, axes[:panels]


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG, atomically."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def _marker(count: int) -> str | None:
    return "o" if count <= MARKERS_MAX else None


def sorted_class_panel(
    ax: Axes,
    curves: Sequence[Curve],
    title: str,
    ylabel: str,
    names: Sequence[str] | None = None,
    flat_line: bool = False,
) -> None:
    """Each curve's per-class values sorted from largest to smallest, against class rank.

    ``flat_line`` adds, per curve, the dashed level of a perfectly balanced distribution with the
    same total (``sum / C``), and a log axis (linear near 0, so empty classes still show) when a
    curve's peak exceeds ``SPIKE_RATIO`` times that level. ``names`` label the x axis when there
    is one curve of few classes.
    """
    from matplotlib.ticker import MaxNLocator  # local: matplotlib loads only when a chart is drawn

    drawn, named, spiky, peak = 0, False, False, 0.0
    for curve in curves:
        values = np.asarray(curve.values, dtype=np.float64)
        order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
        order = order[np.isfinite(values[order])]
        if order.size == 0:
            continue
        ranks = np.arange(1, order.size + 1)
        (artist,) = ax.plot(
            ranks, values[order], marker=_marker(order.size), markersize=4, color=curve.color, label=curve.label
        )
        drawn += 1
        peak = max(peak, float(values[order[0]]))
        if flat_line:
            level = values[order].sum() / values.size
            spiky = spiky or values[order[0]] > SPIKE_RATIO * level
            ax.axhline(
                level,
                color=artist.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"flat: {curve.label} ({level:.3g} per class)",
            )
        if names is not None and len(curves) == 1 and order.size <= NAMED_TICKS_MAX:
            ax.set_xticks(ranks, [names[index] for index in order], rotation=60, ha="right", fontsize=8)
            named = True
    if not drawn:
        message_panel(ax, title, "no data")
        return
    if not named:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if spiky:
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(0, 2.0 * peak)
        ylabel += " (log scale)"
    else:
        ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel("class (sorted, largest first)" if named else "class rank (sorted, largest first)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def histogram_panel(
    ax: Axes,
    curves: Sequence[Curve],
    title: str,
    xlabel: str,
    threshold: float | None = None,
    threshold_label: str = "threshold",
) -> None:
    """Overlaid histograms of values in [0, 1] (confidences), log count axis, threshold marked."""
    bins = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    for curve in curves:
        values = np.clip(np.asarray(curve.values, dtype=np.float64), 0.0, 1.0)
        ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.25, color=curve.color)
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            color=curve.color,
            label=f"{curve.label} (n={values.size})",
        )
    if threshold is not None:
        ax.axvline(
            threshold, color="black", linestyle="--", linewidth=1.2, label=f"{threshold_label} = {threshold:.3g}"
        )
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows (log scale)")
    ax.set_xlim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def line_panel(
    ax: Axes,
    lines: Sequence[Line],
    title: str,
    ylabel: str,
    xlabel: str = "epoch",
    log_scale: bool = False,
    reference: tuple[float, str] | None = None,
    integer_x: bool = True,
) -> None:
    """Series over epochs (or any x); ``reference`` is a labelled dotted horizontal line (e.g. ``log C``)."""
    from matplotlib.ticker import MaxNLocator  # local: matplotlib loads only when a chart is drawn

    drawn = 0
    for line in lines:
        if line.x.size == 0:
            continue
        (artist,) = ax.plot(
            line.x,
            line.y,
            marker=_marker(line.x.size),
            markersize=4,
            color=line.color,
            label=line.label,
            linestyle="--" if line.dashed else "-",
        )
        if line.spread is not None:
            if log_scale:
                lower, upper = line.y * np.exp(-line.spread), line.y * np.exp(line.spread)
            else:
                lower, upper = line.y - line.spread, line.y + line.spread
            ax.fill_between(line.x, lower, upper, color=artist.get_color(), alpha=0.15)
        drawn += 1
    if not drawn:
        message_panel(ax, title, "not recorded")
        return
    if reference is not None:
        ax.axhline(reference[0], color="black", linestyle=":", linewidth=1, label=reference[1])
    if log_scale:
        ax.set_yscale("log")
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def strip_panel(ax: Axes, groups: Sequence[tuple[str, np.ndarray]], title: str, ylabel: str) -> None:
    """One column per group: a dot per run (spread sideways, deterministically) and mean ± std."""
    for position, (_, values) in enumerate(groups):
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        color = PALETTE[position % len(PALETTE)]
        offsets = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(position + offsets, values, color=color, alpha=0.7, s=25, zorder=3)
        std = values.std(ddof=1) if values.size > 1 else 0.0
        ax.errorbar(position + 0.3, values.mean(), yerr=std, fmt="D", color="black", capsize=4, markersize=5, zorder=4)
    ax.set_xticks(
        range(len(groups)),
        [label for label, _ in groups],
        rotation=20 if len(groups) > 3 else 0,
        ha="right" if len(groups) > 3 else "center",
    )
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")


def message_panel(ax: Axes, title: str, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])
