"""Accuracy benchmark: FixMatch vs DebiasPL vs the balanced variant on digits, several label budgets, paired seeds.

    python benchmarks/ssl_digits.py --seeds 10 --budgets 1,2 --jobs 2 --threads 1

For every budget (labeled images per class) and seed, every method (``--debias none``, ``paper``,
``balance``) trains on the *same* labeled split (the split depends on the seed only) with the
``clipdebias ssl`` digits defaults. Phases:

1. ``paper``: the defaults of ``clipdebias ssl --dataset digits`` (tau 0.4, threshold 0.95), on val.
2. ``tune`` (with ``--tune``): a grid over the threshold for FixMatch and the balanced variant and over
   (tau, threshold) for DebiasPL, with as many points each, trained with ``--holdout`` (a stratified part of *train*
   held out as the evaluation split) on other seeds than the final ones; val is never looked at.
3. ``tuned``: the best grid point of each method and budget (mean holdout top-1), on val with the
   phase-1 seeds. A point equal to the defaults reuses the phase-1 runs.

Each run is a ``python -m clipdebias ssl`` process writing its run folder under ``--out``; a run whose
``metrics.json`` already exists with the same options is not run again. The tables go into
``--results`` (docs/results.md), between markers, so the text around them is kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from results_block import write_block  # beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipdebias.config.defaults import SSL_DEFAULTS  # noqa: E402  (light: no torch)

BEGIN, END = "<!-- ssl_digits:begin (written by benchmarks/ssl_digits.py) -->", "<!-- ssl_digits:end -->"
DEFAULT_TAU, DEFAULT_THRESHOLD = SSL_DEFAULTS["digits"].tau, SSL_DEFAULTS["digits"].threshold
FIXMATCH_GRID = (0.7, 0.8, 0.9, 0.95)  # thresholds
DEBIASPL_GRID = tuple(itertools.product((0.4, 1.0), (0.8, 0.95)))  # (tau, threshold)
TUNE_SEED_OFFSET = 100  # tuning seeds are 100, 101, ...: never the seeds of the final runs
# The --debias mode of each method; "labeled-only" is FixMatch with lambda_u 0.
MODES = {"fixmatch": "none", "debiaspl": "paper", "balanced": "balance", "labeled-only": "none"}
METHODS = ("fixmatch", "debiaspl", "balanced")  # the order of the tables; gains are over the first


@dataclass(frozen=True)
class Run:
    phase: str
    per_class: int
    seed: int
    method: str  # a key of MODES
    tau: float
    threshold: float
    holdout: float = 0.0

    @property
    def name(self) -> str:
        return (
            f"k{self.per_class}-{self.method}-tau{self.tau:g}-thr{self.threshold:g}-h{self.holdout:g}-seed{self.seed}"
        )

    def args(self, out: Path) -> list[str]:
        args = [
            "ssl",
            "--dataset",
            "digits",
            "--labels",
            f"{self.per_class}-per-class",
            "--seed",
            str(self.seed),
            "--threshold",
            str(self.threshold),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
        args += ["--debias", MODES[self.method]] + (["--tau", str(self.tau)] if self.method == "debiaspl" else [])
        if self.method == "labeled-only":
            args += ["--lambda-u", "0"]
        if self.holdout:
            args += ["--holdout", str(self.holdout)]
        return args


def _matches(run: Run, folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
        json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    digits = SSL_DEFAULTS["digits"]
    teacher = (config.get("teacher_bn", "ema"), config.get("ema_warmup", False))  # older runs: the reference teacher
    mode = config.get("debias", "paper" if config["tau"] > 0 else "none")  # older runs: paper, or none with tau 0
    saved = (mode, config["tau"], config["threshold"], config["seed"], config["labels"], config["holdout"], *teacher)
    return saved == (
        MODES[run.method],
        run.tau if run.method == "debiaspl" else 0.0,
        run.threshold,
        run.seed,
        f"{run.per_class}-per-class",
        run.holdout,
        digits.teacher_bn,
        digits.ema_warmup,
    )


def execute(
    runs: list[Run], out: Path, jobs: int, threads: int, log, executed: list[Run], existing_only: bool = False
) -> dict[Run, dict]:
    """Run every missing run (``jobs`` processes at a time, ``threads`` torch threads each) and
    return every run's ``metrics.json`` plus its ``metrics.jsonl`` records as ``history``; the runs
    actually started are appended to ``executed``. With ``existing_only`` nothing is run: the runs
    whose folder is missing or unfinished are left out of the result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    def one(run: Run) -> tuple[Run, dict | None]:
        folder = out / run.phase / run.name
        if existing_only and not _matches(run, folder):
            return run, None
        if not _matches(run, folder):
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "clipdebias", *run.args(folder)], env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"{run.name} failed ({done.returncode}): {done.stderr[-2000:]}")
            log(
                f"{run.phase:6} {run.name}: {json.loads((folder / 'metrics.json').read_text())['top1']:.1f}% "
                f"in {time.perf_counter() - started:.0f} s"
            )
            executed.append(run)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["history"] = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return run, metrics

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return {run: metrics for run, metrics in pool.map(one, runs) if metrics is not None}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def _rows(results: dict[Run, dict], runs: list[Run]) -> list[str]:
    """Markdown rows, one per (budget, method, tau, threshold), with paired gains over FixMatch."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.per_class, run.method, run.tau, run.threshold), []).append(run)
    lines = []
    for (k, method, tau, threshold), members in sorted(
        groups.items(),
        key=lambda item: (item[0][0], (("labeled-only", *METHODS).index(item[0][1])), item[0][2:]),
    ):
        members = sorted(members, key=lambda r: r.seed)
        metrics = [results[r] for r in members]
        top1 = [m["top1"] for m in metrics]
        gain = "-"
        if method in METHODS[1:]:
            partners = {r.seed: results[r] for r in runs if r.per_class == k and r.method == "fixmatch"}
            diffs = [m["top1"] - partners[r.seed]["top1"] for r, m in zip(members, metrics) if r.seed in partners]
            if diffs:
                gain = f"{_mean_std(diffs)} ({sum(d > 0 for d in diffs)}/{len(diffs)} wins)"
        pl_acc = [m["pseudo_labels"]["accuracy"] for m in metrics if m["pseudo_labels"]["accuracy"] is not None]
        ratios = [m["pseudo_labels"]["imbalance_ratio"] for m in metrics]
        worst = [min(v for v in m["per_class_top1"] if v is not None) for m in metrics]
        shown_tau = f"{tau:g}" if method == "debiaspl" else "–"
        lines.append(
            f"| {k} | {method} | {shown_tau} | {threshold:g} | {len(members)} | **{_mean_std(top1)}** | {gain} | "
            f"{_mean_std(worst)} | {_mean_std(pl_acc)} | "
            f"{_mean_std([m['pseudo_labels']['mask_rate'] * 100 for m in metrics])} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.1f}–{max(ratios):.1f}) |"
        )
    return lines


HEADER = (
    "| labels per class | method | tau | threshold | seeds | top-1 % | paired gain over FixMatch (points, wins) | "
    "worst class top-1 % | pseudo-label accuracy % | mask rate % | imbalance ratio, median (min–max) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _trajectory(results: dict[Run, dict], runs: list[Run]) -> list[str]:
    """Per epoch: mean top-1 and median imbalance ratio of each method (same runs as a table above)."""
    lines = []
    for k in sorted({r.per_class for r in runs}):
        series = {}
        for method in METHODS:
            histories = [results[r]["history"] for r in runs if r.per_class == k and r.method == method]
            if histories:
                series[method] = histories
        if len(series) < 2:
            continue
        epochs = min(len(h) for hs in series.values() for h in hs)
        lines += [
            f"| epoch ({k} labeled per class) | " + " | ".join(str(e + 1) for e in range(epochs)) + " |",
            "|---|" + "---|" * epochs,
        ]
        for method, histories in series.items():
            top1 = [statistics.mean(h[e]["top1"] for h in histories) for e in range(epochs)]
            ratio = [statistics.median(h[e]["imbalance_ratio"] for h in histories) for e in range(epochs)]
            lines.append(f"| {method} top-1 % | " + " | ".join(f"{v:.1f}" for v in top1) + " |")
            lines.append(f"| {method} imbalance ratio | " + " | ".join(f"{v:.1f}" for v in ratio) + " |")
        lines.append("")
    return lines[:-1]


def _best(results: dict[Run, dict], k: int, method: str) -> Run:
    """The grid point with the best mean holdout top-1 (ties: the defaults, then the first)."""
    scores: dict[tuple[float, float], list[float]] = {}
    for run, metrics in results.items():
        if run.phase == "tune" and run.per_class == k and run.method == method:
            scores.setdefault((run.tau, run.threshold), []).append(metrics["top1"])
    default = (DEFAULT_TAU if method == "debiaspl" else 0.0, DEFAULT_THRESHOLD)
    best = max(scores, key=lambda key: (statistics.mean(scores[key]), key == default))
    return Run("tuned", k, 0, method, *best)


def _tuning_table(results: dict[Run, dict], budgets: list[int]) -> list[str]:
    lines = [
        "| labels per class | method | tau | threshold | holdout top-1 % (mean ± std over tuning seeds) |",
        "|---|---|---|---|---|",
    ]
    for k in budgets:
        for method in METHODS:
            scores: dict[tuple[float, float], list[float]] = {}
            for run, metrics in results.items():
                if run.phase == "tune" and run.per_class == k and run.method == method:
                    scores.setdefault((run.tau, run.threshold), []).append(metrics["top1"])
            if not scores:
                continue
            chosen = _best(results, k, method)
            for (tau, threshold), values in sorted(scores.items()):
                mark = " ← chosen" if (tau, threshold) == (chosen.tau, chosen.threshold) else ""
                shown_tau = f"{tau:g}" if method == "debiaspl" else "–"
                lines.append(f"| {k} | {method} | {shown_tau} | {threshold:g} | {_mean_std(values)}{mark} |")
    return lines


def write_results(path: Path, body: str) -> None:
    write_block(path, BEGIN, END, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="final seeds per budget and method (0 .. N-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first final seed (to split runs over processes)")
    parser.add_argument("--budgets", default="1,2", help="labeled images per class, comma-separated")
    parser.add_argument(
        "--tune", action="store_true", help="tune on a held-out part of train, then rerun the best on val"
    )
    parser.add_argument("--tune-seeds", type=int, default=2, help="seeds per grid point when tuning")
    parser.add_argument("--holdout", type=float, default=0.25, help="fraction of train held out for tuning")
    parser.add_argument(
        "--labeled-only", action="store_true", help="also train on the labeled images only (lambda_u 0)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)} (gains need fixmatch)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: CPUs / jobs)")
    parser.add_argument(
        "--existing-only", action="store_true", help="run nothing: tables of the finished run folders in --out"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ssl-digits")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = [m for m in METHODS if m in args.methods.split(",")]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    log = lambda message: print(message, flush=True)  # noqa: E731
    started = time.perf_counter()

    paper = [
        Run("paper", k, s, m, DEFAULT_TAU if m == "debiaspl" else 0.0, DEFAULT_THRESHOLD)
        for k in budgets
        for s in seeds
        for m in methods
    ]
    if args.labeled_only:
        paper += [Run("paper", k, s, "labeled-only", 0.0, DEFAULT_THRESHOLD) for k in budgets for s in seeds]
    tune: list[Run] = []
    if args.tune:
        tune_seeds = [TUNE_SEED_OFFSET + i for i in range(args.tune_seeds)]
        for k, s in itertools.product(budgets, tune_seeds):
            grids = {"fixmatch": [(0.0, t) for t in FIXMATCH_GRID], "debiaspl": DEBIASPL_GRID}
            grids["balanced"] = grids["fixmatch"]
            tune += [Run("tune", k, s, m, tau, t, args.holdout) for m in methods for tau, t in grids[m]]
    executed: list[Run] = []
    results = execute(paper + tune, args.out, args.jobs, threads, log, executed, args.existing_only)
    paper = [r for r in paper if r in results]
    tuned: list[Run] = []
    if args.tune:
        for k, method in itertools.product(budgets, methods):
            best = _best(results, k, method)
            phase = (
                "paper"
                if (best.tau, best.threshold) == (DEFAULT_TAU if method == "debiaspl" else 0.0, DEFAULT_THRESHOLD)
                else "tuned"
            )
            tuned += [replace(best, phase=phase, seed=s) for s in seeds]
        todo = [r for r in tuned if r.phase == "tuned"]
        results.update(execute(todo, args.out, args.jobs, threads, log, executed, args.existing_only))
        tuned = [r for r in tuned if r in results]
    wall = time.perf_counter() - started

    command = "python benchmarks/ssl_digits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train_times = [m["elapsed_s"] for m in results.values()]
    import torch

    body = [
        "## Semi-supervised digits: FixMatch vs DebiasPL vs balanced",
        "",
        f"Reproduce: `{command}` ({len(results)} runs; this invocation trained {len(executed)} of them in "
        f"{wall / 60:.1f} min and reused the others' run folders; "
        f"{statistics.mean(train_times):.0f} s of training per run on average, {args.jobs} run(s) at a time with "
        f"{threads} torch thread(s) each; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}). Every run is `clipdebias ssl --dataset digits` with the digits defaults "
        "(docs/usage.md: 10 epochs x 250 steps, batch 16 labeled + 64 unlabeled, EMA teacher 0.99 "
        f"(`--teacher-bn {SSL_DEFAULTS['digits'].teacher_bn} --{'' if SSL_DEFAULTS['digits'].ema_warmup else 'no-'}"
        f"ema-warmup`), prior momentum 0.99), on 540 val images; seeds {seeds[0]}..{seeds[-1]} pick the labeled "
        "images, paired between methods.",
        "",
        "Methods: fixmatch = `--debias none`, debiaspl = `--debias paper` (tau as shown), balanced = "
        "`--debias balance`. Columns: top-1 and worst-class top-1 of the EMA teacher on val (mean ± std over "
        "seeds); paired gain = method - FixMatch on the same seed (same labeled images; wins: seeds where it is "
        "higher); pseudo-label accuracy, mask rate and "
        "imbalance ratio (largest / smallest class count, smallest floored at 1) of the confident pseudo-labels "
        "of the last epoch.",
        "",
        f"### Digits defaults (DebiasPL tau {DEFAULT_TAU:g}; threshold {DEFAULT_THRESHOLD:g})",
        "",
        HEADER,
        *_rows(results, paper),
        "",
        "Per epoch (the same runs; mean top-1 over seeds, median imbalance ratio of the epoch's confident "
        "pseudo-labels):",
        "",
        *_trajectory(results, [r for r in paper if r.method != "labeled-only"]),
    ]
    if args.tune:
        body += [
            "",
            f"### Tuning on a held-out {args.holdout:.0%} of train "
            f"(seeds {TUNE_SEED_OFFSET}..{TUNE_SEED_OFFSET + args.tune_seeds - 1}; val unused)",
            "",
            *_tuning_table(results, budgets),
            "",
            "### Tuned settings, on val (seeds as above)",
            "",
            HEADER,
            *_rows(results, tuned),
        ]
    write_results(args.results, "\n".join(body))
    log(f"wrote {args.results} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
