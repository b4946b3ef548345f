"""``write_report``: charts (PNG) and a ``report.md`` for a run folder or a pseudo-label CSV.

What a report shows (docs/usage.md has a picture of each):

- sorted pseudo-label class counts with the flat line of a balanced distribution: raw vs debiased
  for a pseudo-label CSV, first vs last epoch for a training run;
- per-class accuracy, sorted (and per-class pseudo-label precision/recall when labels are known);
- confidence histograms raw vs debiased, with the threshold marked;
- for training runs: accuracy, mask rate, loss and imbalance per epoch, and how the class prior
  evolved (its entropy and the lines of the classes it favours and disfavours most);
- for a CSV of image files: ``gallery.png``, thumbnails of what each class was labeled with
  (:mod:`clipdebias.reporting.gallery`).

Pure of printing: the CLI renders :class:`ReportResult`. Optional fields that are missing only
leave a chart or a row out (with a note); only foreign input raises :class:`UserError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdebias import __version__, metrics
from clipdebias.config import defaults
from clipdebias.pseudolabels.files import PseudoLabelTable, read_pseudolabels
from clipdebias.reporting import gallery, plots
from clipdebias.reporting.runs import RunRecord, as_imbalance, read_run
from clipdebias.utils.atomic import atomic_write_text
from clipdebias.utils.errors import UserError
from clipdebias.utils.formatting import fmt, fmt_change, markdown_table
from clipdebias.utils.json_values import as_number, as_vector

if TYPE_CHECKING:  # matplotlib is heavy: plots.py imports it only when a chart is drawn
    from matplotlib.figure import Figure

REPORT_DIR = "report"
"""A run folder's report goes to ``RUN/report/``."""
CSV_REPORT_SUFFIX = "_report"
"""A CSV's report goes to ``FILE_report/`` beside ``FILE.csv``."""
REPORT_FILE = "report.md"
ZEROSHOT_PREFIX = "zeroshot_"
"""File-name prefix of the charts of a run folder's own ``pseudolabels.csv``."""
TABLE_ALL_MAX = 40
"""Per-class tables list every class up to this many classes, else the ``TABLE_EXTREMES`` each end."""
TABLE_EXTREMES = 10
PRIOR_LINES_EACH = 3
"""The prior chart draws the lines of this many most- and least-favoured classes."""

Row = tuple[str, str]


@dataclass(frozen=True, eq=False)
class Chart:
    filename: str
    title: str
    caption: str
    figure: Figure


@dataclass(frozen=True, eq=False)
class Section:
    """A part of a report: summary rows, charts and markdown tables."""

    heading: str
    summary: tuple[Row, ...]
    charts: tuple[Chart, ...]
    tables: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote: ``markdown`` and ``images`` (all under ``out_dir``)."""

    source: Path
    kind: str
    out_dir: Path
    markdown: Path
    images: tuple[Path, ...]
    summary: tuple[Row, ...]
    notes: tuple[str, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.images, self.markdown)


# --- markdown ---------------------------------------------------------------------------------


def class_table(
    title: str, names: Sequence[str], columns: dict[str, tuple[np.ndarray, int]], sort_by: np.ndarray, ascending: bool
) -> str:
    """A markdown per-class table sorted by ``sort_by``: all classes when few, else both extremes.

    ``columns`` maps a header to ``(values, decimals)``.
    """
    key = np.nan_to_num(np.asarray(sort_by, dtype=np.float64), nan=np.inf if ascending else -np.inf)
    order = np.argsort(key if ascending else -key, kind="stable")
    header = ["rank", "class", *columns]

    def row(rank: int) -> list[str]:
        index = int(order[rank])
        return [str(rank + 1), names[index], *(fmt(values[index], digits) for values, digits in columns.values())]

    if len(order) <= TABLE_ALL_MAX:
        rows = [row(rank) for rank in range(len(order))]
        note = ""
    else:
        rows = [row(rank) for rank in range(TABLE_EXTREMES)]
        rows.append(["…", f"{len(order) - 2 * TABLE_EXTREMES} classes", *("…" for _ in columns)])
        rows += [row(rank) for rank in range(len(order) - TABLE_EXTREMES, len(order))]
        note = f" (the {TABLE_EXTREMES} at each end of {len(order)})"
    return f"### {title}{note}\n\n{markdown_table(header, rows)}"


# --- a pseudo-label CSV -----------------------------------------------------------------------


def _threshold_text(table: PseudoLabelTable) -> str:
    if table.threshold is None:
        return "unknown"
    return f"≈{table.threshold:.3f} (inferred)" if table.threshold_inferred else f"{table.threshold:g}"


def _never_predicted(counts: np.ndarray) -> int:
    return int((np.asarray(counts) == 0).sum())


def correction_name(sidecar: Mapping[str, Any]) -> str:
    """The chosen correction in a few words, from a pseudo-label sidecar: ``paper (tau 0.4)``,
    ``balance``, ``none``, with `` + kNN (K 10, alpha 0.5)`` when the teacher was refined first; the
    paper mode when the sidecar predates the modes."""
    if not sidecar:
        return "corrected (mode unknown: no sidecar)"
    mode = str(sidecar.get("debias") or "paper")
    tau = as_number(sidecar.get("tau"))
    text = f"paper (tau {tau:g})" if mode == "paper" and tau is not None else mode
    knn = sidecar.get("knn")
    if isinstance(knn, Mapping) and (as_number(knn.get("k")) or 0) > 0:
        alpha = as_number(knn.get("alpha"))
        text += f" + kNN (K {int(knn['k'])}, alpha {'?' if alpha is None else f'{alpha:g}'})"
    return text


def _paper_curve(table: PseudoLabelTable, num_classes: int) -> tuple[plots.Curve | None, str]:
    """The paper's default correction's class counts beside a different chosen mode (from the
    sidecar's ``paper_class_counts``), and a sentence for the chart saying what is drawn."""
    mode = str(table.sidecar.get("debias") or "paper")
    knn = table.sidecar.get("knn")
    refined = isinstance(knn, Mapping) and (as_number(knn.get("k")) or 0) > 0
    default_paper = mode == "paper" and not refined and table.tau == defaults.TAU
    if default_paper:
        return None, ""
    counts = as_vector(table.sidecar.get("paper_class_counts"), num_classes)
    if counts is None:
        return None, (
            " The paper's default correction is not drawn (raw vs the chosen correction only): there is no "
            "`paper_class_counts` in a sidecar (none, or one of an earlier release), and it cannot be "
            "recomputed from the CSV's labels alone."
        )
    tau = as_number(table.sidecar.get("paper_tau")) or defaults.TAU
    curve = plots.Curve(f"paper (tau {tau:g})", np.asarray(counts, dtype=float), plots.PAPER_COLOR)
    return curve, f" The green curve is the paper's default correction (tau {tau:g}) of the same teacher."


def pseudolabel_section(
    table: PseudoLabelTable, prefix: str = "", row_prefix: str = "", heading: str = "Pseudo-labels"
) -> Section:
    """Summary, charts and tables of a pseudo-label CSV.

    Chart files are named ``prefix + name``; summary row labels start with ``row_prefix``.
    """
    num_classes, names = table.num_classes, table.classes
    raw_counts = metrics.class_counts(table.raw_pseudo_label, num_classes)
    deb_counts = metrics.class_counts(table.pseudo_label, num_classes)
    raw_selected = table.raw_selected
    selected = table.selected
    chosen = correction_name(table.sidecar)
    paper_curve, paper_text = _paper_curve(table, num_classes)
    summary: list[Row] = [
        (f"{row_prefix}input", f"pseudo-label CSV: {table.num_rows} rows, {num_classes} classes"),
        (f"{row_prefix}correction", chosen),
        (
            f"{row_prefix}tau / threshold",
            f"{fmt(table.tau, 2) if table.tau is not None else 'unknown'} / {_threshold_text(table)}",
        ),
        (
            f"{row_prefix}imbalance, all rows (raw → debiased)",
            fmt_change(metrics.imbalance_ratio(raw_counts), metrics.imbalance_ratio(deb_counts), 1, "×"),
        ),
        (
            f"{row_prefix}classes never predicted (raw → debiased)",
            f"{_never_predicted(raw_counts)} → {_never_predicted(deb_counts)}",
        ),
    ]
    count_curves = [
        plots.Curve("raw zero-shot", raw_counts.astype(float), plots.RAW_COLOR),
        *([paper_curve] if paper_curve is not None else []),
        plots.Curve(chosen, deb_counts.astype(float), plots.DEBIASED_COLOR),
    ]
    if paper_curve is not None:
        summary.append(
            (
                f"{row_prefix}imbalance, all rows (paper default → {chosen})",
                fmt_change(metrics.imbalance_ratio(paper_curve.values), metrics.imbalance_ratio(deb_counts), 1, "×"),
            )
        )
    kept_curves: list[plots.Curve] = []
    if selected is not None and raw_selected is not None:
        raw_kept = metrics.class_counts(table.raw_pseudo_label[raw_selected], num_classes)
        deb_kept = metrics.class_counts(table.pseudo_label[selected], num_classes)
        kept_curves = [
            plots.Curve("raw zero-shot", raw_kept.astype(float), plots.RAW_COLOR),
            plots.Curve(chosen, deb_kept.astype(float), plots.DEBIASED_COLOR),
        ]
        summary.insert(
            2,
            (
                f"{row_prefix}selected rows (raw → debiased)",
                f"{int(raw_selected.sum())} → {int(selected.sum())} of {table.num_rows}",
            ),
        )
        summary.insert(
            4,
            (
                f"{row_prefix}imbalance, selected rows (raw → debiased)",
                fmt_change(metrics.imbalance_ratio(raw_kept), metrics.imbalance_ratio(deb_kept), 1, "×"),
            ),
        )

    figure, axes = plots.new_figure(2 if kept_curves else 1, "Pseudo-label counts per class, sorted")
    plots.sorted_class_panel(axes[0], count_curves, "all rows (argmax)", "rows", names=names, flat_line=True)
    if kept_curves:
        plots.sorted_class_panel(
            axes[1],
            kept_curves,
            f"rows with confidence ≥ {_threshold_text(table)}",
            "rows",
            names=names,
            flat_line=True,
            empty_text="no row reached the threshold",
        )
    charts = [
        Chart(
            f"{prefix}class_counts.png",
            "Pseudo-label counts per class",
            "Each curve is one labelling's class counts, the classes sorted from the most to the least "
            "predicted by the raw zero-shot labels (beyond 30 classes each curve is sorted on its own and "
            "the largest and smallest classes are named under the axis); the dashed line is a perfectly balanced "
            "labelling with the same total. The closer a curve hugs its line, the less biased the "
            "pseudo-labels. The count axis is logarithmic when one class has over 10 times another's rows. "
            f"The blue curve is the chosen correction: {chosen}." + paper_text,
            figure,
        )
    ]

    table_columns: dict[str, tuple[np.ndarray, int]] = {
        "raw count": (raw_counts.astype(float), 0),
        "debiased count": (deb_counts.astype(float), 0),
    }
    known = table.known
    if table.labels is not None and known.any():
        truth = table.labels
        labels = truth[known]
        raw_pred, deb_pred = table.raw_pseudo_label[known], table.pseudo_label[known]
        raw_recall = metrics.per_class_recall(labels, raw_pred, num_classes)
        deb_recall = metrics.per_class_recall(labels, deb_pred, num_classes)
        raw_precision = metrics.per_class_precision(labels, raw_pred, num_classes)
        deb_precision = metrics.per_class_precision(labels, deb_pred, num_classes)
        summary.append(
            (
                f"{row_prefix}accuracy, labeled rows (raw → debiased)",
                fmt_change(metrics.accuracy(labels, raw_pred), metrics.accuracy(labels, deb_pred), 1, "%"),
            )
        )
        if selected is not None and raw_selected is not None:
            raw_rows, deb_rows = known & raw_selected, known & selected
            summary.append(
                (
                    f"{row_prefix}accuracy, selected rows (raw → debiased)",
                    fmt_change(
                        metrics.accuracy(truth[raw_rows], table.raw_pseudo_label[raw_rows]),
                        metrics.accuracy(truth[deb_rows], table.pseudo_label[deb_rows]),
                        1,
                        "%",
                    ),
                )
            )
        summary.append(
            (
                f"{row_prefix}worst class accuracy (raw → debiased)",
                fmt_change(np.nanmin(raw_recall), np.nanmin(deb_recall), 1, "%"),
            )
        )
        if not known.all():
            summary.append((f"{row_prefix}rows with a ground-truth label", f"{int(known.sum())} of {table.num_rows}"))
        figure, axes = plots.new_figure(2, "Per-class quality of the pseudo-labels, sorted")
        plots.sorted_class_panel(
            axes[0],
            [
                plots.Curve("raw zero-shot", raw_recall, plots.RAW_COLOR),
                plots.Curve("debiased", deb_recall, plots.DEBIASED_COLOR),
            ],
            "per-class accuracy (recall)",
            "% of the class's rows",
            names=names,
        )
        plots.sorted_class_panel(
            axes[1],
            [
                plots.Curve("raw zero-shot", raw_precision, plots.RAW_COLOR),
                plots.Curve("debiased", deb_precision, plots.DEBIASED_COLOR),
            ],
            "per-class precision",
            "% of the rows labelled with the class",
            names=names,
        )
        charts.append(
            Chart(
                f"{prefix}per_class.png",
                "Per-class accuracy and precision",
                "Left: for each class, the share of its images that get the right pseudo-label (recall); "
                "right: the share of the images labelled with a class that truly belong to it (precision); "
                "the classes sorted by the raw zero-shot value (each curve on its own beyond 30 classes). "
                "Biased pseudo-labels show as a steep recall curve (starved classes are rarely predicted) "
                "and low precision for the dominant classes; debiasing should narrow both gaps.",
                figure,
            )
        )
        table_columns |= {
            "raw recall %": (raw_recall, 1),
            "debiased recall %": (deb_recall, 1),
            "raw precision %": (raw_precision, 1),
            "debiased precision %": (deb_precision, 1),
        }
    figure, axes = plots.new_figure(2, "Confidence of the pseudo-labels")
    plots.histogram_panel(
        axes[0],
        [
            plots.Curve("raw zero-shot", table.raw_confidence, plots.RAW_COLOR),
            plots.Curve("debiased", table.confidence, plots.DEBIASED_COLOR),
        ],
        "confidence histogram",
        "confidence (largest class probability)",
        threshold=table.threshold,
    )
    plots.line_panel(
        axes[1],
        _kept_lines(table),
        "rows kept as the threshold rises",
        "fraction of rows with confidence ≥ threshold",
        xlabel="threshold",
        integer_x=False,
    )
    if table.threshold is not None:
        axes[1].axvline(table.threshold, color="black", linestyle="--", linewidth=1.2)
    charts.append(
        Chart(
            f"{prefix}confidence.png",
            "Confidence, raw vs debiased",
            "Left: histograms of the confidence (largest softmax probability) of the plain zero-shot "
            "and the debiased pseudo-labels, the dashed line at the selection threshold; right: how "
            "many rows a threshold keeps.",
            figure,
        )
    )
    tables = (
        class_table("Per-class pseudo-labels, sorted by raw count", names, table_columns, raw_counts, ascending=False),
    )
    found, why_not = gallery.build_gallery(table)
    if found is not None:
        charts.append(Chart(gallery.GALLERY_FILE, "Gallery", found.caption, found.figure))
    return Section(heading, tuple(summary), tuple(charts), tables, (why_not,) if why_not else ())


def _kept_lines(table: PseudoLabelTable) -> list[plots.Line]:
    grid = np.linspace(0.0, 1.0, plots.HISTOGRAM_BINS + 1)

    def kept(values: np.ndarray) -> np.ndarray:
        ordered = np.sort(values)
        return 1.0 - np.searchsorted(ordered, grid, side="left") / max(len(ordered), 1)

    return [
        plots.Line("raw zero-shot", grid, kept(table.raw_confidence), plots.RAW_COLOR),
        plots.Line("debiased", grid, kept(table.confidence), plots.DEBIASED_COLOR),
    ]


# --- a training run ---------------------------------------------------------------------------


def _run_input_text(run: RunRecord) -> str:
    method = str(run.value("method") or "unknown method")
    parts = [f"training run ({method})"]
    if run.value("dataset") is not None:
        parts.append(str(run.value("dataset")))
    if run.num_classes is not None:
        parts.append(f"{run.num_classes} classes")
    epochs = len(run.epochs)
    parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'} recorded" + ("" if run.finished else ", unfinished"))
    return ", ".join(parts)


def _imbalance_series(run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    epochs, values = run.epoch_series("imbalance_ratio")
    if values.size == 0 and run.num_classes:
        epochs, counts = run.epoch_vectors("pseudo_label_counts")
        values = np.asarray([metrics.imbalance_ratio(row) for row in counts])
    return epochs, values


def _prior_entropy_series(run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    epochs, values = run.epoch_series("prior_entropy")
    if values.size == 0 and run.num_classes:
        epochs, priors = run.epoch_vectors("prior")
        values = np.asarray([metrics.array_entropy(row) for row in priors])
    return epochs, values


def _run_summary(run: RunRecord, per_class: np.ndarray | None) -> list[Row]:
    rows: list[Row] = [("input", _run_input_text(run))]
    top1, top5 = run.number("top1"), run.number("top5")
    rows.append(("top-1 / top-5", f"{fmt(top1, 1, '%')} / {fmt(top5, 1, '%')}"))
    if per_class is not None and np.isfinite(per_class).any():
        rows.append(
            (
                "per-class top-1, worst / median / best",
                " / ".join(
                    fmt(v, 1, "%") for v in (np.nanmin(per_class), np.nanmedian(per_class), np.nanmax(per_class))
                ),
            )
        )
    for key, label in (
        ("zeroshot_top1", "zero-shot top-1 (raw)"),
        ("zeroshot_debiased_top1", "zero-shot top-1 (debiased)"),
    ):
        if run.number(key) is not None:
            rows.append((label, fmt(run.number(key), 1, "%")))
    rows.append(("pseudo-label mask rate", fmt(run.pseudo_label_number("mask_rate", "mask_rate"), 3)))
    rows.append(("pseudo-label accuracy", fmt(run.pseudo_label_number("accuracy", "pseudo_label_accuracy"), 1, "%")))
    _, imbalance = _imbalance_series(run)
    final_imbalance = as_imbalance(run.pseudo_label_number("imbalance_ratio", "imbalance_ratio"))
    if imbalance.size > 1:
        rows.append(
            (
                "imbalance ratio (first → last epoch)",
                fmt_change(as_imbalance(float(imbalance[0])), final_imbalance, 1, "×"),
            )
        )
    else:
        rows.append(("imbalance ratio", fmt(final_imbalance, 1, "×")))
    _, entropies = _prior_entropy_series(run)
    if entropies.size and run.num_classes:
        rows.append(
            ("prior entropy (last / uniform)", f"{fmt(entropies[-1], 3)} / {fmt(math.log(run.num_classes), 3)} nats")
        )
    for key, label, digits, suffix in (("seed", "seed", 0, ""), ("elapsed_s", "elapsed", 0, " s")):
        value = run.number(key)
        if value is not None:
            rows.append((label, fmt(value, digits, suffix)))
    return rows


def _draws_per_image(run: RunRecord) -> float | None:
    """How many times the last epoch drew each unlabeled image, on average: its confident
    pseudo-labels / its mask rate (the rows seen) / the unlabeled images; ``None`` if unknown."""
    _, counts = run.epoch_vectors("pseudo_label_counts")
    _, mask_rates = run.epoch_series("mask_rate")
    images = run.number("unlabeled_images")
    if not len(counts) or not mask_rates.size or not mask_rates[-1] > 0 or not images:
        return None
    return float(counts[-1].sum() / mask_rates[-1] / images)


def _counts_chart(run: RunRecord) -> Chart | None:
    epochs, counts = run.epoch_vectors("pseudo_label_counts")
    curves = []
    if len(counts) > 1:
        curves.append(plots.Curve(f"epoch {epochs[0]:g}", counts[0], plots.FIRST_COLOR))
    final = run.final_counts()
    if final is None:
        return None
    curves.append(plots.Curve(f"epoch {epochs[-1]:g}" if len(counts) else "last epoch", final, plots.DEBIASED_COLOR))
    draws = _draws_per_image(run)
    per_image = f", about {draws:.1f} draws per unlabeled image" if draws is not None and draws >= 1.05 else ""
    figure, axes = plots.new_figure(1, "Confident pseudo-labels per class, sorted")
    plots.sorted_class_panel(
        axes[0],
        curves,
        f"pseudo-labels at or above the threshold, counted per draw{per_image}",
        "confident pseudo-labels (per draw)",
        names=run.classes,
        flat_line=True,
        empty_text="no pseudo-label reached the threshold",
        sort_by=-1,
    )
    return Chart(
        "class_counts.png",
        "Pseudo-label counts per class",
        "The confident (mask = 1) pseudo-labels of the unlabeled data per class, for the first and the "
        "last epoch, the classes sorted from the most to the least predicted in the last epoch (beyond 30 "
        "classes each curve is sorted on its own and the largest and smallest classes are named under the axis); each "
        "dashed line is a perfectly balanced labelling with the same total. Natural imbalance shows as a "
        "steep curve; the count axis is logarithmic when one class has over 10 times another's. Counts "
        "are per draw, not per image: an unlabeled image drawn in k steps of an epoch counts k times "
        "(each draw is one training target), so the totals exceed the number of unlabeled images.",
        figure,
    )


def _training_chart(run: RunRecord) -> Chart | None:
    if not run.epochs:
        return None
    series = run.epoch_series
    figure, axes = plots.new_figure(4, "Training, per epoch")
    plots.line_panel(
        axes[0],
        [
            plots.Line("top-1 (EMA teacher)", *series("top1")),
            plots.Line("top-5", *series("top5"), dashed=True),
            plots.Line("pseudo-label accuracy", *series("pseudo_label_accuracy")),
        ],
        "accuracy",
        "%",
    )
    plots.line_panel(
        axes[1], [plots.Line("mask rate", *series("mask_rate"))], "mask rate (confident unlabeled rows)", "fraction"
    )
    plots.line_panel(
        axes[2],
        [
            plots.Line("total", *series("loss")),
            plots.Line("labeled (loss_x)", *series("loss_x"), dashed=True),
            plots.Line("unlabeled (loss_u)", *series("loss_u"), dashed=True),
        ],
        "loss",
        "loss",
    )
    plots.line_panel(
        axes[3],
        [plots.Line("imbalance ratio", *_imbalance_series(run))],
        "pseudo-label imbalance (largest / smallest class)",
        "ratio (log scale)",
        log_scale=True,
        reference=(1.0, "equal class counts"),
    )
    return Chart(
        "training.png",
        "Training curves",
        "Accuracy of the EMA teacher on the evaluation split and of the confident pseudo-labels, the "
        "share of unlabeled rows above the threshold, the losses, and the imbalance of the confident "
        "pseudo-labels (largest / smallest class count, counted per draw, the smallest floored at 1: "
        "while a class gets no confident pseudo-label the ratio is the largest class's count), per epoch.",
        figure,
    )


def _prior_chart(run: RunRecord) -> Chart | None:
    epochs, priors = run.epoch_vectors("prior")
    entropy_epochs, entropies = _prior_entropy_series(run)
    if not len(priors) and not entropies.size:
        return None
    figure, axes = plots.new_figure(2, "Class prior q over training")
    reference = (
        (math.log(run.num_classes), f"uniform (log C = {math.log(run.num_classes):.3g})") if run.num_classes else None
    )
    plots.line_panel(
        axes[0],
        [plots.Line("entropy of q", entropy_epochs, entropies)],
        "entropy of the class prior",
        "nats",
        reference=reference,
    )
    lines = []
    if len(priors):
        final = priors[-1]
        order = np.argsort(-final, kind="stable")
        chosen = (
            order
            if len(order) <= 2 * PRIOR_LINES_EACH
            else np.concatenate([order[:PRIOR_LINES_EACH], order[-PRIOR_LINES_EACH:]])
        )
        for rank, index in enumerate(chosen):
            lines.append(
                plots.Line(
                    run.classes[index],
                    epochs,
                    priors[:, index],
                    plots.PALETTE[rank % len(plots.PALETTE)],
                    dashed=rank >= PRIOR_LINES_EACH,
                )
            )
    uniform = (1.0 / run.num_classes, "uniform 1/C") if run.num_classes else None
    plots.line_panel(axes[1], lines, "prior of the most and least favoured classes", "q[c]", reference=uniform)
    return Chart(
        "prior.png",
        "Class prior",
        "DebiasPL's running estimate q of the teacher's class distribution: its entropy (log C when "
        "uniform; lower means the teacher favours some classes) and the classes it favours most "
        "(solid) and least (dashed) at the end. The debiased pseudo-labels subtract tau log q.",
        figure,
    )


def _per_class_chart(run: RunRecord, per_class: np.ndarray | None) -> Chart | None:
    if per_class is None:
        return None
    figure, axes = plots.new_figure(1, "Per-class top-1 on the evaluation split, sorted")
    plots.sorted_class_panel(
        axes[0],
        [plots.Curve("per-class top-1", per_class, plots.DEBIASED_COLOR)],
        "per-class accuracy",
        "%",
        names=run.classes,
    )
    return Chart(
        "per_class_accuracy.png",
        "Per-class accuracy",
        "The EMA teacher's accuracy on each class of the evaluation split, sorted from best to worst. A "
        "long tail on the right means classes the model has not learned.",
        figure,
    )


def run_section(run: RunRecord) -> Section:
    """Summary, charts and tables of a training run."""
    per_class = as_vector(run.metrics.get("per_class_top1"), run.num_classes) if run.num_classes else None
    builders: list[Callable[[], Chart | None]] = [
        lambda: _counts_chart(run),
        lambda: _per_class_chart(run, per_class),
        lambda: _training_chart(run),
        lambda: _prior_chart(run),
    ]
    charts = tuple(chart for chart in (build() for build in builders) if chart is not None)
    tables: tuple[str, ...] = ()
    if run.num_classes:
        columns: dict[str, tuple[np.ndarray, int]] = {}
        if per_class is not None:
            columns["top-1 %"] = (per_class, 1)
        final_counts = run.final_counts()
        if final_counts is not None:
            columns["pseudo-labels (last epoch)"] = (final_counts, 0)
        _, priors = run.epoch_vectors("prior")
        if len(priors):
            columns["prior q"] = (priors[-1], 4)
        if per_class is not None:
            tables = (
                class_table("Per-class results, worst top-1 first", run.classes, columns, per_class, ascending=True),
            )
        elif columns:
            first_column = next(iter(columns.values()))[0]
            tables = (class_table("Per-class results", run.classes, columns, first_column, ascending=False),)
    return Section("Training run", tuple(_run_summary(run, per_class)), charts, tables)


# --- writing ----------------------------------------------------------------------------------


def default_out_dir(path: Path) -> Path:
    """``RUN/report`` for a run folder, ``FILE_report/`` beside ``FILE.csv``."""
    return path / REPORT_DIR if path.is_dir() else path.with_name(path.stem + CSV_REPORT_SUFFIX)


def _markdown(source: Path, kind: str, sections: Sequence[Section], notes: Sequence[str]) -> str:
    parts = [
        f"# clipdebias report: {source.name or source}",
        f"Source: `{source}` ({kind}), written by clipdebias {__version__}.",
        "## Summary",
        markdown_table(["quantity", "value"], [row for section in sections for row in section.summary]),
    ]
    for section in sections:
        if len(sections) > 1:
            parts.append(f"## {section.heading}")
        for chart in section.charts:
            parts += [f"### {chart.title}", f"![{chart.title}]({chart.filename})", chart.caption]
        parts += list(section.tables)
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"


def write_report(path: str | Path, out_dir: str | Path | None = None) -> ReportResult:
    """Write the charts and ``report.md`` of a run folder or a pseudo-label CSV.

    ``out_dir`` defaults to :func:`default_out_dir`. Returns the files written and the summary rows.
    Raises :class:`UserError` only for input that is not a run folder / pseudo-label CSV.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder (ssl/zeroshot --out) or a pseudo-label CSV")
    target = Path(out_dir).expanduser() if out_dir is not None else default_out_dir(path)
    if path.is_dir():
        run = read_run(path)
        sections = [run_section(run)]
        notes = list(run.notes)
        if run.pseudolabels is not None:
            section = pseudolabel_section(
                run.pseudolabels, ZEROSHOT_PREFIX, "zero-shot ", "Zero-shot pseudo-labels (pseudolabels.csv)"
            )
            sections.append(section)
            notes += [f"pseudolabels.csv: {note}" for note in (*run.pseudolabels.notes, *section.notes)]
        kind = "training run"
    else:
        table = read_pseudolabels(path)
        sections = [pseudolabel_section(table)]
        notes = [*table.notes, *sections[0].notes]
        kind = "pseudo-label CSV"
    images = []
    for section in sections:
        for chart in section.charts:
            images.append(plots.save_png(chart.figure, target / chart.filename))
    markdown = atomic_write_text(target / REPORT_FILE, _markdown(path, kind, sections, notes))
    return ReportResult(
        source=path,
        kind=kind,
        out_dir=target,
        markdown=markdown,
        images=tuple(images),
        summary=tuple(row for section in sections for row in section.summary),
        notes=tuple(notes),
    )


def try_write_report(path: str | Path) -> tuple[ReportResult | None, str | None]:
    """:func:`write_report` for the end of a finished command: ``(result, None)``, or ``(None, why)``.

    A report is a bonus on top of work already saved (a trained run, a CSV): whatever goes wrong
    while drawing it is returned as text for a warning, never raised.
    """
    try:
        return write_report(path), None
    except Exception as err:  # noqa: BLE001 - see the docstring
        return None, f"{type(err).__name__}: {err}"
