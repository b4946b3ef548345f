"""``compare_runs``: finished runs side by side, grouped (e.g. FixMatch vs DebiasPL over seeds).

Runs are grouped by the values of a few keys (``metrics.json`` first, then ``config.json``):
by default ``method``, ``dataset``, ``labels``, ``tau`` and ``threshold``; the group names show
the keys whose values differ. Per group: mean ± std of top-1 and of the pseudo-label accuracy,
mean mask rate, median imbalance ratio, and the paired top-1 gain over the first group on the
seeds both ran. One markdown file and one chart; pure of printing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdebias import __version__, metrics
from clipdebias.config import defaults
from clipdebias.reporting import plots
from clipdebias.reporting.runs import RunRecord, as_imbalance, read_run
from clipdebias.training.run_layout import METRICS
from clipdebias.utils.atomic import atomic_write_text
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.formatting import MISSING, count_of, fmt, fmt_mean_std, markdown_table
from clipdebias.utils.json_values import as_number

if TYPE_CHECKING:  # matplotlib is heavy: plots.py imports it only when a chart is drawn
    from matplotlib.figure import Figure

DEFAULT_GROUP_KEYS = defaults.COMPARE_GROUP_KEYS
"""What splits runs into groups: besides the method and its main options, what was trained
(``ssl`` or ``zeroshot``, the ``zeroshot`` student, the ``ssl`` network) and whether CLIP's labels
were a fallback (``ssl --clip-pseudolabels``), so that "DebiasPL w/ CLIP" is never pooled with
DebiasPL."""
SETTING_KEYS_IGNORED = frozenset(
    {"out", "seed", "resume", "version", "device", "workers", "threads", "prefetch_factor", "eval_batch_size",
     "encode_batch_size", "cache_dir", "report", "compile"}
)  # fmt: skip
"""config.json keys that do not change what a run measures: they never make a group suspicious."""
GROUP_KEYS_EXAMPLE = "method, dataset, labels, tau, threshold, seed, arch, student"
"""Keys named in the error for a --by key that no run has."""
IGNORED_BY_METHOD = {"fixmatch": frozenset({"tau"}), "balanced": frozenset({"tau"})}
"""Options a method does not use: they neither split nor name its groups."""
COMPARE_FILE = "compare.md"
COMPARE_CHART = "compare.png"
CLASS_COUNT_LISTED = 4
"""How many runs the different-class-counts error names."""
PERCENT = (0.0, 100.0)
IMBALANCE = (1.0, math.inf)
"""The ranges of the charted quantities: a ± std band never leaves them (a 99% accuracy ± 3 stops at 100)."""


@dataclass(frozen=True, eq=False)
class RunSummary:
    """One run's final numbers (``None`` where not recorded) and its record."""

    record: RunRecord
    group: str
    seed: float | None
    top1: float | None
    top5: float | None
    pseudo_label_accuracy: float | None
    mask_rate: float | None
    imbalance_ratio: float | None

    @property
    def path(self) -> Path:
        return self.record.path


@dataclass(frozen=True, eq=False)
class GroupSummary:
    """The runs of one group and their aggregates; ``paired_gain`` is ``(mean, std, n seeds)`` or None."""

    name: str
    runs: tuple[RunSummary, ...]
    top1: tuple[float, float]
    pseudo_label_accuracy: tuple[float, float]
    mask_rate: tuple[float, float]
    imbalance_median: float
    paired_gain: tuple[float, float, int] | None

    @property
    def seeds(self) -> list[float]:
        return [run.seed for run in self.runs if run.seed is not None]


@dataclass(frozen=True, eq=False)
class CompareResult:
    """What :func:`compare_runs` wrote, and the groups it found (the first one is the baseline)."""

    out_dir: Path
    markdown: Path
    chart: Path
    groups: tuple[GroupSummary, ...]
    group_keys: tuple[str, ...]
    num_classes: int | None
    notes: tuple[str, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.chart, self.markdown)

    @property
    def runs(self) -> tuple[RunSummary, ...]:
        return tuple(run for group in self.groups for run in group.runs)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from the arguments: a folder with ``metrics.json``, or a folder whose direct
    sub-folders are such runs (e.g. one folder per seed). Duplicates are dropped, order kept."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if (path / METRICS).is_file():
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if (child / METRICS).is_file()) if path.is_dir() else []
        if not children:
            raise UserError(
                f"{path} is not a finished run folder (no {METRICS}) and holds none; "
                "pass the --out folders of finished 'ssl' or 'zeroshot' runs"
            )
        found.extend(children)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _value_text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, int, bool)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _group_names(records: Sequence[RunRecord], keys: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """Each run's group name and the keys that vary across runs (``method`` always names a group)."""
    # None marks a key the run's method ignores: it neither splits nor names a group.
    values = [
        {
            key: None
            if key in IGNORED_BY_METHOD.get(str(record.value("method")), ())
            else _value_text(record.value(key))
            for key in keys
        }
        for record in records
    ]
    varying = tuple(key for key in keys if len({row[key] for row in values} - {None}) > 1)
    names = []
    for row in values:
        parts = [row["method"] or MISSING] if "method" in keys else []
        # a key the run does not have (an ssl run's student) is left out of its name
        parts += [f"{key}={row[key]}" for key in varying if key != "method" and row[key] not in (None, MISSING)]
        names.append(" ".join(parts) or "all runs")
    return names, varying


def _mixed_settings(group: GroupSummary) -> str | None:
    """A note for a group that holds a seed more than once, naming the config.json keys whose values
    differ between its runs (runs of different settings pooled by the grouping keys)."""
    seeds = group.seeds
    if len(set(seeds)) == len(seeds):
        return None
    configs = [run.record.config for run in group.runs]
    keys = sorted({key for config in configs for key in config} - SETTING_KEYS_IGNORED)
    differ = [key for key in keys if len({_value_text(config.get(key)) for config in configs}) > 1]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    return f"{group.name}: seed {', '.join(f'{seed:g}' for seed in repeated)} appears more than once" + (
        f"; its runs differ in {', '.join(differ)}: add them to --by to split the group" if differ else ""
    )


METHOD_KEYS = frozenset({"method", "no_debias", "debias"})
"""config.json keys that follow from the method: they differ between FixMatch, DebiasPL and the balanced
variant by design."""


def _settings_beside_baseline(group: GroupSummary, baseline: GroupSummary, varying: Sequence[str]) -> str | None:
    """A note for a group whose paired gain over ``baseline`` also reflects settings other than the
    grouping keys (``image_size`` 32 vs 224, ``batch_size`` 4 vs 64): it names each such config.json
    key with the values of both sides."""
    if group.paired_gain is None:
        return None
    ignored = set(SETTING_KEYS_IGNORED) | METHOD_KEYS | set(varying)
    for run in (*group.runs, *baseline.runs):
        ignored |= IGNORED_BY_METHOD.get(str(run.record.value("method")), frozenset())

    def values(runs: Sequence[RunSummary], key: str) -> list[str]:
        return sorted({_value_text(run.record.config.get(key)) for run in runs})

    keys = sorted({key for run in (*group.runs, *baseline.runs) for key in run.record.config} - ignored)
    differ = [
        f"{key} ({'/'.join(values(baseline.runs, key))} vs {'/'.join(values(group.runs, key))})"
        for key in keys
        if values(baseline.runs, key) != values(group.runs, key)
    ]
    if not differ:
        return None
    return (
        f"{group.name} vs {baseline.name}: the runs also differ in {', '.join(differ)}; the paired gain "
        "reflects these too: add them to --by, or compare runs that share them"
    )


def _check_class_counts(records: Sequence[RunRecord]) -> int | None:
    known = [(record, record.num_classes) for record in records if record.num_classes is not None]
    counts = {count for _, count in known}
    if len(counts) > 1:
        listed = ", ".join(f"{record.path} ({count})" for record, count in known[:CLASS_COUNT_LISTED])
        more = f" and {len(known) - CLASS_COUNT_LISTED} more" if len(known) > CLASS_COUNT_LISTED else ""
        raise UserError(
            f"cannot compare runs with different numbers of classes: {listed}{more}; compare runs of one dataset"
        )
    return counts.pop() if counts else None


def _summarise(record: RunRecord, group: str) -> RunSummary:
    return RunSummary(
        record=record,
        group=group,
        seed=as_number(record.value("seed")),
        top1=record.number("top1"),
        top5=record.number("top5"),
        pseudo_label_accuracy=record.pseudo_label_number("accuracy", "pseudo_label_accuracy"),
        mask_rate=record.pseudo_label_number("mask_rate", "mask_rate"),
        imbalance_ratio=as_imbalance(record.pseudo_label_number("imbalance_ratio", "imbalance_ratio")),
    )


def _by_seed(runs: Sequence[RunSummary]) -> dict[float, float] | None:
    """Top-1 per seed, or ``None`` when a seed is missing or repeated (pairing would be ambiguous)."""
    seeds = [run.seed for run in runs]
    if any(seed is None for seed in seeds) or len(set(seeds)) != len(seeds):
        return None
    return {run.seed: run.top1 for run in runs if run.top1 is not None}  # type: ignore[misc]


def paired_gain(runs: Sequence[RunSummary], baseline: Sequence[RunSummary]) -> tuple[float, float, int] | None:
    """Mean ± std of ``top1(run) - top1(baseline run)`` over the seeds both groups ran once."""
    mine, theirs = _by_seed(runs), _by_seed(baseline)
    if mine is None or theirs is None:
        return None
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    mean, std = metrics.mean_std([mine[seed] - theirs[seed] for seed in common])
    return mean, std, len(common)


def _group(name: str, runs: Sequence[RunSummary], baseline: Sequence[RunSummary] | None) -> GroupSummary:
    return GroupSummary(
        name=name,
        runs=tuple(runs),
        top1=metrics.mean_std([run.top1 for run in runs]),
        pseudo_label_accuracy=metrics.mean_std([run.pseudo_label_accuracy for run in runs]),
        mask_rate=metrics.mean_std([run.mask_rate for run in runs]),
        imbalance_median=metrics.median([run.imbalance_ratio for run in runs]),
        paired_gain=paired_gain(runs, baseline) if baseline is not None else None,
    )


def _epoch_mean(
    runs: Sequence[RunSummary], key: str, geometric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per epoch, the mean (and std when several runs) of ``key`` over the runs that recorded it.

    ``geometric``: mean and std of ``log(value)``, the mean returned as ``exp`` (for ratios drawn on
    a log axis, where an arithmetic mean ± std would reach below zero).
    """
    per_epoch: dict[float, list[float]] = {}
    for run in runs:
        for epoch, value in zip(*run.record.epoch_series(key), strict=True):
            if geometric and not value > 0:
                continue
            per_epoch.setdefault(float(epoch), []).append(float(np.log(value)) if geometric else float(value))
    epochs = sorted(per_epoch)
    pairs = [metrics.mean_std(per_epoch[epoch]) for epoch in epochs]
    means = np.asarray([mean for mean, _ in pairs])
    if geometric:
        means = np.exp(means)
    spread = np.asarray([std if math.isfinite(std) else 0.0 for _, std in pairs])
    return np.asarray(epochs), means, spread if len(runs) > 1 else None


def chart_figure(groups: Sequence[GroupSummary]) -> Figure:
    """The four panels of ``compare.png``."""
    figure, axes = plots.new_figure(
        4, "Runs compared" + (" (mean ± std over runs)" if any(len(g.runs) > 1 for g in groups) else "")
    )
    plots.strip_panel(
        axes[0],
        [
            (group.name, np.asarray([run.top1 if run.top1 is not None else np.nan for run in group.runs]))
            for group in groups
        ],
        "final top-1 per run (◆ mean ± std)",
        "top-1 %",
    )

    def lines(key: str, bounds: tuple[float, float], geometric: bool = False) -> list[plots.Line]:
        drawn = []
        for index, group in enumerate(groups):
            epochs, means, spread = _epoch_mean(group.runs, key, geometric)
            color = plots.PALETTE[index % len(plots.PALETTE)]
            drawn.append(plots.Line(group.name, epochs, means, color, spread=spread, bounds=bounds))
        return drawn

    plots.line_panel(axes[1], lines("top1", PERCENT), "top-1 per epoch", "top-1 %")
    plots.line_panel(
        axes[2],
        lines("imbalance_ratio", IMBALANCE, geometric=True),
        "pseudo-label imbalance per epoch (geometric mean)",
        "largest / smallest class (log scale)",
        log_scale=True,
        reference=(1.0, "equal class counts"),
    )
    plots.line_panel(axes[3], lines("pseudo_label_accuracy", PERCENT), "pseudo-label accuracy per epoch", "%")
    return figure


def _seed_text(group: GroupSummary) -> str:
    seeds = group.seeds
    return ", ".join(f"{seed:g}" for seed in seeds) if seeds else MISSING


def group_rows(groups: Sequence[GroupSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the group table (shared by the markdown file and the terminal).

    ``Δ top-1`` is the paired gain over the first group; ``PL acc.`` the pseudo-label accuracy;
    ``imbalance`` the median over the group's runs.
    """
    header = ["group", "runs", "seeds", "top-1 %", "Δ top-1", "PL acc. %", "mask rate", "imbalance"]
    rows = []
    for index, group in enumerate(groups):
        if index == 0:
            gain = "baseline"
        elif group.paired_gain is None:
            gain = MISSING
        else:
            mean, std, count = group.paired_gain
            gain = f"{mean:+.1f}" + (f" ± {std:.1f}" if math.isfinite(std) else "") + f" (n={count})"
        rows.append(
            [
                group.name,
                str(len(group.runs)),
                _seed_text(group),
                fmt_mean_std(*group.top1),
                gain,
                fmt_mean_std(*group.pseudo_label_accuracy),
                fmt_mean_std(*group.mask_rate, digits=2),
                fmt(group.imbalance_median, 1, "×"),
            ]
        )
    return header, rows


def _markdown(
    groups: Sequence[GroupSummary], keys: Sequence[str], num_classes: int | None, notes: Sequence[str]
) -> str:
    runs = [run for group in groups for run in group.runs]
    header, rows = group_rows(groups)
    run_rows = [
        [
            str(run.path),
            run.group,
            fmt(run.seed, 0),
            fmt(run.top1),
            fmt(run.top5),
            fmt(run.pseudo_label_accuracy),
            fmt(run.mask_rate, 3),
            fmt(run.imbalance_ratio, 1, "×"),
        ]
        for run in runs
    ]
    grouped_by = ", ".join(keys) if keys else "nothing differs"
    parts = [
        "# clipdebias compare",
        f"{count_of(len(runs), 'run')} in {len(groups)} group(s) (grouped by: {grouped_by}), "
        f"{num_classes if num_classes is not None else 'unknown number of'} classes; "
        f"written by clipdebias {__version__}. "
        "Top-1, pseudo-label (PL) accuracy and mask rate are mean ± sample std over a group's runs; "
        f"Δ top-1 is the mean ± std gain over the baseline group ({groups[0].name}) on the seeds both ran "
        "(n pairs); imbalance (largest / smallest class count of the last epoch's confident "
        "pseudo-labels) is the median over the group's runs.",
        "## Groups",
        markdown_table(header, rows),
        "## Runs",
        markdown_table(
            ["run", "group", "seed", "top-1 %", "top-5 %", "pseudo-label acc. %", "mask rate", "imbalance"], run_rows
        ),
        "## Chart",
        f"![runs compared]({COMPARE_CHART})",
    ]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"


def compare_runs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    group_by: Sequence[str] = DEFAULT_GROUP_KEYS,
    known_keys_only: bool = False,
    overwrite: bool = False,
) -> CompareResult:
    """Group finished runs, write ``compare.md`` and ``compare.png`` into ``out_dir``.

    Raises :class:`UserError` for a path that is not a finished run (nor a folder of runs), for
    runs with different numbers of classes, and, with ``known_keys_only`` (keys the user typed), for
    a key that no run has; unless ``overwrite``, when ``out_dir`` already holds ``compare.md`` or
    ``compare.png``.
    """
    if not paths:
        raise UserError("give at least one run folder to compare")
    out = Path(out_dir).expanduser()
    if not overwrite:
        for name in (COMPARE_FILE, COMPARE_CHART):
            if (out / name).exists():
                raise UserError(
                    f"--out {out_dir}: {out / name} already exists; "
                    "pass --overwrite to replace it, or give another --out"
                )
    keys = tuple(dict.fromkeys(key.strip() for key in group_by if key.strip()))
    records = [read_run(path) for path in find_runs(paths)]
    if known_keys_only:
        unknown = [key for key in keys if all(record.value(key) is None for record in records)]
        if unknown:
            raise OptionError(
                "by",
                f"{','.join(unknown)}: no run has this key in metrics.json or config.json (e.g. {GROUP_KEYS_EXAMPLE})",
            )
    num_classes = _check_class_counts(records)
    names, varying = _group_names(records, keys)
    notes = [f"{record.path}: {note}" for record in records for note in record.notes]
    members: dict[str, list[RunSummary]] = {}
    for record, name in zip(records, names, strict=True):
        members.setdefault(name, []).append(_summarise(record, name))
    ordered = list(members.items())
    baseline = ordered[0][1]
    groups = tuple(_group(name, runs, None if index == 0 else baseline) for index, (name, runs) in enumerate(ordered))
    notes += [note for note in map(_mixed_settings, groups) if note is not None]
    beside = (_settings_beside_baseline(group, groups[0], varying) for group in groups[1:])
    notes += [note for note in beside if note is not None]
    for group in groups[1:]:
        if group.paired_gain is None:
            notes.append(
                f"{group.name}: no paired gain (no seed shared with {groups[0].name}, or a seed repeats within a group)"
            )
    chart = plots.save_png(chart_figure(groups), out / COMPARE_CHART)
    markdown = atomic_write_text(out / COMPARE_FILE, _markdown(groups, varying, num_classes, notes))
    return CompareResult(out, markdown, chart, groups, varying, num_classes, tuple(notes))
