"""Drawing primitives for the report charts: matplotlib ``Figure`` objects, never ``pyplot``.

``Figure`` objects render with the Agg canvas when saved, so nothing here touches matplotlib's
global backend or leaks figures, and it works headless and inside notebooks alike. Per-class
panels draw *sorted curves*: up to ``NAMED_TICKS_MAX`` classes every class is a named tick; beyond
that, class rank on x (readable at 1000 classes) and the largest and smallest classes named under it.
Count axes turn logarithmic, with plain-number ticks, when one class towers over another.
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
"""Up to this many classes, a per-class panel names every class on its x axis."""
MARKERS_MAX = 40
"""Up to this many points, curves show a marker per point."""
HISTOGRAM_BINS = 40
SPIKE_RATIO = 10.0
"""A count panel switches to a log axis when a curve's largest / smallest class (floored at 1) exceeds this."""
NAMED_EXTREMES = 5
"""Beyond ``NAMED_TICKS_MAX`` classes, a per-class panel names this many largest and smallest classes."""
NAME_CHARS = 24
"""Class names longer than this are cut (with …) on axes and in the gallery."""
UPRIGHT_NAME_CHARS = 3
"""Class-name ticks stand upright when no name is longer than this (digits), else they are turned."""

RAW_COLOR = "tab:red"
DEBIASED_COLOR = "tab:blue"
PAPER_COLOR = "tab:green"  # the paper's default correction, drawn beside another chosen mode
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
    on a linear axis, ``y × exp(±spread)`` on a log axis (``spread`` then being a std of ``log y``),
    clipped to ``bounds`` (the quantity's range, e.g. ``(0, 100)`` for a percentage)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str | None = None
    spread: np.ndarray | None = None
    dashed: bool = False
    bounds: tuple[float, float] | None = None


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


def _imbalance(values: np.ndarray) -> float:
    """Largest / smallest value, the smallest floored at 1 (as :func:`clipdebias.metrics.imbalance_ratio`)."""
    return float(values.max() / max(values.min(), 1.0)) if values.size and values.max() > 0 else 1.0


def _plain_number(value: float, _position: object = None) -> str:
    """A tick label without powers of ten: ``0``, ``1``, ``10``, ``1,000``, ``0.5``."""
    return f"{value:,.0f}" if abs(value) >= 1 or value == 0 else f"{value:g}"


def log_count_axis(ax: Axes, peak: float) -> None:
    """A log y axis for counts (linear between 0 and 1, so empty classes still show) whose ticks
    read as plain numbers (1, 10, 100, 1,000), with unlabelled minor ticks at 2..9 of each decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, SymmetricalLogLocator

    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 2.0 * peak)
    ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=1.0, base=10.0))
    ax.yaxis.set_minor_locator(SymmetricalLogLocator(linthresh=1.0, base=10.0, subs=np.arange(2, 10)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _extremes_text(values: np.ndarray, names: Sequence[str], label: str) -> str:
    """Two lines naming the ``NAMED_EXTREMES`` largest and smallest classes of one curve, for a
    panel of too many classes to name each (they go under the x axis, where they hide no data)."""
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    order = order[np.isfinite(values[order])]
    count = min(NAMED_EXTREMES, order.size // 2)
    smallest = values[order[-1]]
    ties = int((values[order] == smallest).sum())
    tied = f" ({ties} classes at {_plain_number(float(smallest))})" if ties > count else ""

    def listed(indices: np.ndarray) -> str:
        return ", ".join(f"{short_name(names[i])} {_plain_number(float(values[i]))}" for i in indices)

    return f"largest by {label}: {listed(order[:count])}\nsmallest{tied}: {listed(order[order.size - count :][::-1])}"


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    """``name`` cut to ``limit`` characters (the last one an ellipsis) when longer."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def sorted_class_panel(
    ax: Axes,
    curves: Sequence[Curve],
    title: str,
    ylabel: str,
    names: Sequence[str] | None = None,
    flat_line: bool = False,
    empty_text: str = "no data",
    sort_by: int = 0,
) -> None:
    """Per-class values sorted from largest to smallest, the classes named.

    Up to ``NAMED_TICKS_MAX`` classes with ``names``, every class is a named tick, ordered by the
    values of ``curves[sort_by]``; the other curves follow that order (so they need not fall).
    Beyond that (or without names) each curve is sorted on its own against class rank, and two
    lines under the axis name the ``NAMED_EXTREMES`` largest and smallest classes of ``curves[sort_by]``.

    ``flat_line`` (for counts) adds, per curve, the dashed level of a perfectly balanced
    distribution with the same total (``sum / C``; one grey line when every curve has the same
    total), and a log axis (linear near 0, so empty classes still show) when a curve's largest /
    smallest class (floored at 1) exceeds ``SPIKE_RATIO``. A panel with nothing to draw (no finite
    value; for counts, every count 0) shows ``empty_text`` instead of an empty axis.
    """
    from matplotlib.ticker import MaxNLocator  # local: matplotlib loads only when a chart is drawn

    shown = [
        (curve, values) for curve in curves if np.isfinite(values := np.asarray(curve.values, dtype=np.float64)).any()
    ]
    if not shown or (flat_line and all(np.nansum(values) <= 0 for _, values in shown)):
        message_panel(ax, title, empty_text)
        return
    key_curve, reference = next(((c, v) for c, v in shown if c is curves[sort_by]), shown[0])
    size = reference.size
    named = names is not None and len(names) == size and size <= NAMED_TICKS_MAX
    common = np.argsort(-np.nan_to_num(reference, nan=-np.inf), kind="stable")
    spiky, peak = False, 0.0
    levels = [float(np.nansum(values)) / values.size for _, values in shown]
    shared_level = flat_line and len(shown) > 1 and np.allclose(levels, levels[0], rtol=1e-9, atol=0.0)
    for position, (curve, values) in enumerate(shown):
        if named:
            order = common
        else:
            order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
            order = order[np.isfinite(values[order])]
        ranks = np.arange(1, order.size + 1)
        (artist,) = ax.plot(
            ranks, values[order], marker=_marker(order.size), markersize=4, color=curve.color, label=curve.label
        )
        peak = max(peak, float(np.nanmax(values)))
        if flat_line:
            finite = values[np.isfinite(values)]
            level = finite.sum() / values.size
            spiky = spiky or _imbalance(finite) > SPIKE_RATIO
            per_class = f"{_plain_number(level) if level >= 10 else f'{level:.3g}'} per class"
            if not shared_level:
                label = f"flat: {curve.label} ({per_class})"
                ax.axhline(level, color=artist.get_color(), linestyle="--", linewidth=1, label=label)
            elif position == 0:  # the curves have one total: one level, not one line each on top of the other
                ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=f"flat: every curve ({per_class})")
    if named and names is not None:
        labels = [short_name(names[i]) for i in common]
        turned = max(len(label) for label in labels) > UPRIGHT_NAME_CHARS
        ax.set_xticks(
            np.arange(1, size + 1), labels, rotation=60 if turned else 0, ha="right" if turned else "center", fontsize=8
        )
        by = f" by {key_curve.label}" if len(shown) > 1 else ""
        ax.set_xlabel(f"class (sorted{by}, largest first)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        xlabel = (
            "class rank (each curve sorted, largest first)" if len(shown) > 1 else "class rank (sorted, largest first)"
        )
        if names is not None and len(names) == size:
            ax.set_xlabel(f"{xlabel}\n{_extremes_text(reference, names, key_curve.label)}", fontsize=8)
        else:
            ax.set_xlabel(xlabel)
    if spiky:
        log_count_axis(ax, peak)
        ylabel += " (log scale)"
    else:
        ax.set_ylim(bottom=0)
    ax.set_title(title)
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
            if line.bounds is not None:
                lower, upper = np.clip(lower, *line.bounds), np.clip(upper, *line.bounds)
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
