"""Accuracy benchmark of the ``zeroshot`` head student on a CLIP *proxy* built from digits (no CLIP weights).

    PYTHONPATH=. python benchmarks/zeroshot_head_digits.py --seeds 10 --tune-seeds 3

What stands in for what (none of it is CLIP; no weights can be downloaded on the development machine):

- **image embeddings**: a fixed feature extractor of scikit-learn's 8x8 digits, fit without labels:
  pixels standardised with the train split's mean/std, a fixed random projection to 256 dimensions
  (seed ``EXTRACTOR_SEED``), ReLU, L2 normalisation;
- **augmented-view embeddings** (``--views``): the same extractor on copies of each train image
  shifted by up to one pixel (seeded per view), as ``zeroshot`` caches crops of real images;
- **CLIP's text classifier**: deliberately weak and biased, one prototype per class = the embedding
  of ONE random train image of that class (drawn per seed; the only labels used for training);
  ``logit_scale`` ``PROXY_SCALE``, fixed beforehand so that about a third of the train images reach
  a (debiased) confidence of 0.95, measured without labels.

Per seed, on the 540 val images: "zero-shot" top-1 (the prototype classifier), debiased zero-shot
top-1 (``logits - 0.4 log q`` with the train prior), and the head student trained by
:func:`clipdebias.commands.zeroshot.head.zeroshot_head` (the library call ``zeroshot --student head`` makes)
with ``--no-debias`` (FixMatch, tau 0 for the labels and the loop) and with DebiasPL (tau 0.4).
The learning rate and the student threshold are tuned per method on a stratified 20% of train held
out from training (tuning seeds ``TUNE_SEED_OFFSET``...; val unused), with the same grid for both.
The tables go into ``--results`` (docs/results.md) between markers, so the text around them is kept.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_block import write_block  # noqa: E402 - beside this script

from clipdebias.commands.zeroshot.config import SHARED_DEFAULTS, STUDENT_DEFAULTS, HeadSettings, LoopSettings  # noqa: E402
from clipdebias.commands.zeroshot.head import ZeroShotArrays, zeroshot_head  # noqa: E402
from clipdebias.data.sources import load_digits_split  # noqa: E402

BEGIN, END = (
    "<!-- zeroshot_head_digits:begin (written by benchmarks/zeroshot_head_digits.py) -->",
    "<!-- zeroshot_head_digits:end -->",
)
EXTRACTOR_SEED = 12345
FEATURE_DIM = 256
STD_FLOOR = 0.1  # added to each pixel's std before standardising (border pixels are almost constant)
PROXY_SCALE = 20.0
VIEW_SEED = 777
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 4242
TUNE_SEED_OFFSET = 100
LR_GRID = (0.05, 0.15, 0.5, 1.5)  # relative to the logit scale (--lr of the head student)
THRESHOLD_GRID = (0.7, 0.8, 0.95)
METHODS = {"fixmatch": 0.0, "debiaspl": SHARED_DEFAULTS.tau}


# --- the proxy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extractor:
    """The fixed feature extractor: standardise, project, ReLU, normalise."""

    mean: np.ndarray
    std: np.ndarray
    projection: np.ndarray

    @classmethod
    def fit(cls, train_images: np.ndarray) -> Extractor:
        pixels = train_images.reshape(len(train_images), -1).astype(np.float32) / 255.0
        rng = np.random.default_rng(EXTRACTOR_SEED)
        projection = rng.normal(size=(FEATURE_DIM, pixels.shape[1])).astype(np.float32) / np.sqrt(pixels.shape[1])
        return cls(pixels.mean(axis=0), pixels.std(axis=0) + STD_FLOOR, projection)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
        features = np.maximum(((pixels - self.mean) / self.std) @ self.projection.T, 0.0)
        return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def shifted(images: np.ndarray, seed: int) -> np.ndarray:
    """Each image moved by -1, 0 or +1 pixel on each axis (zero fill), drawn per image."""
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, size=(2, len(images)))
    return np.stack([padded[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(len(images))])


@dataclass(frozen=True)
class Proxy:
    train: np.ndarray
    train_labels: np.ndarray
    views: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray

    @classmethod
    def build(cls, num_views: int) -> Proxy:
        train, val = load_digits_split("train"), load_digits_split("val")
        extract = Extractor.fit(train.images)
        views = (
            np.stack([extract(shifted(train.images, VIEW_SEED + k)) for k in range(num_views)]) if num_views else None
        )
        return cls(extract(train.images), train.labels, views, extract(val.images), val.labels)

    def classifier(self, seed: int) -> torch.Tensor:
        """One random train image per class: the weak, biased 'text classifier' of this seed."""
        rng = np.random.default_rng(seed)
        picks = [rng.choice(np.flatnonzero(self.train_labels == c)) for c in range(int(self.train_labels.max()) + 1)]
        return torch.from_numpy(self.train[picks])

    def arrays(self, seed: int, holdout: bool, views: int) -> ZeroShotArrays:
        """Train on all train images and evaluate on val, or (``holdout``) train on 80% and evaluate on the rest."""
        rows, evaluation = np.arange(len(self.train)), None
        if holdout:
            rng = np.random.default_rng(HOLDOUT_SEED)
            held = np.concatenate([
                rng.permutation(np.flatnonzero(self.train_labels == c))[
                    : round(HOLDOUT_FRACTION * np.sum(self.train_labels == c))
                ]
                for c in np.unique(self.train_labels)
            ])  # fmt: skip
            rows, evaluation = np.setdiff1d(rows, held), np.sort(held)
        return ZeroShotArrays(
            train_ids=rows,
            train_embeddings=self.train[rows],
            train_labels=self.train_labels[rows],
            classifier=self.classifier(seed),
            logit_scale=PROXY_SCALE,
            eval_embeddings=self.train[evaluation] if holdout else self.val,
            eval_labels=self.train_labels[evaluation] if holdout else self.val_labels,
            views=self.views[:views, rows] if views and self.views is not None else None,
            num_train_images=len(self.train),
        )


# --- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    phase: str
    method: str
    seed: int
    lr: float
    threshold: float
    views: int
    holdout: bool


def execute(run: Run, proxy: Proxy) -> dict:
    defaults = STUDENT_DEFAULTS["head"]
    loop = LoopSettings(
        tau=METHODS[run.method], threshold=run.threshold, prior_momentum=SHARED_DEFAULTS.prior_momentum,
        lambda_u=defaults.lambda_u, ema_momentum=defaults.ema_momentum, epochs=defaults.epochs, steps_per_epoch=None,
        min_steps_per_epoch=SHARED_DEFAULTS.min_steps_per_epoch, batch_size=defaults.batch_size, mu=defaults.mu,
        lr=run.lr, weight_decay=defaults.weight_decay, warmup_epochs=defaults.warmup_epochs,
        clip_fallback=SHARED_DEFAULTS.clip_fallback, seed=run.seed,
    )  # fmt: skip
    head = HeadSettings(SHARED_DEFAULTS.head, SHARED_DEFAULTS.feature_dropout, SHARED_DEFAULTS.feature_noise)
    started = time.perf_counter()
    out = zeroshot_head(proxy.arrays(run.seed, run.holdout, run.views), loop, head, SHARED_DEFAULTS.select_threshold)
    return {
        "zeroshot": out.zeroshot.top1,
        "zeroshot_debiased": out.zeroshot_debiased.top1,
        "student": out.student.top1,
        "worst_class": min(v for v in out.student.per_class_top1 if v is not None),
        "confident": len(out.selection.confident),
        "pl_accuracy": out.train.pseudo_labels.accuracy,
        "mask_rate": out.train.pseudo_labels.mask_rate,
        "imbalance": out.train.pseudo_labels.imbalance_ratio,
        "seconds": time.perf_counter() - started,
    }


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _final_table(results: dict[Run, dict], finals: dict[str, list[Run]]) -> list[str]:
    fix, deb = (finals[m] for m in ("fixmatch", "debiaspl"))
    zero = [results[r]["zeroshot"] for r in deb]
    lines = [
        "| classifier | top-1 % | worst class % | paired gain vs zero-shot | pseudo-label acc. % | mask rate "
        "| median imbalance |",
        "|---|---|---|---|---|---|---|",
        f"| zero-shot (prototypes) | {mean_std(zero)} | | | | | |",
        f"| zero-shot, debiased (tau 0.4, train prior) "
        f"| {mean_std([results[r]['zeroshot_debiased'] for r in deb])} | | "
        f"{mean_std([results[r]['zeroshot_debiased'] - results[r]['zeroshot'] for r in deb])} | | | |",
    ]
    for name, runs in (("head, `--no-debias` (FixMatch)", fix), ("head, DebiasPL", deb)):
        rows = [results[r] for r in runs]
        lines.append(
            f"| {name} (lr {runs[0].lr:g}, threshold {runs[0].threshold:g}) "
            f"| {mean_std([m['student'] for m in rows])} | "
            f"{mean_std([m['worst_class'] for m in rows])} "
            f"| {mean_std([m['student'] - z for m, z in zip(rows, zero)])} | "
            f"{mean_std([m['pl_accuracy'] for m in rows])} | {statistics.mean(m['mask_rate'] for m in rows):.2f} | "
            f"{statistics.median(m['imbalance'] for m in rows):.1f} |"
        )
    gains = [results[d]["student"] - results[f]["student"] for f, d in zip(fix, deb)]
    wins = sum(g > 0 for g in gains)
    lines += [
        "",
        f"Paired gain of DebiasPL over `--no-debias`: {mean_std(gains)} points ({wins} of {len(gains)} seeds better).",
    ]
    return lines


def _tuning_table(results: dict[Run, dict], tuning: list[Run]) -> list[str]:
    lines = [
        "| method | "
        + " | ".join(f"lr {lr:g}, thr {t:g}" for lr, t in itertools.product(LR_GRID, THRESHOLD_GRID))
        + " |"
    ]
    lines.append("|---" * (1 + len(LR_GRID) * len(THRESHOLD_GRID)) + "|")
    for method in METHODS:
        cells = []
        for lr, threshold in itertools.product(LR_GRID, THRESHOLD_GRID):
            scores = [results[r]["student"] for r in tuning if (r.method, r.lr, r.threshold) == (method, lr, threshold)]
            cells.append(f"{statistics.mean(scores):.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def write_results(path: Path, body: str) -> None:
    write_block(path, BEGIN, END, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="final seeds (0 .. N-1): prototypes and training")
    parser.add_argument("--tune-seeds", type=int, default=3, help="seeds per grid point when tuning (on the holdout)")
    parser.add_argument("--views", type=int, default=SHARED_DEFAULTS.views, help="augmented views (as --views)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices: 1 is fastest)")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda message: print(message, flush=True)  # noqa: E731
    started = time.perf_counter()
    proxy = Proxy.build(args.views)
    results: dict[Run, dict] = {}

    def run_all(runs: list[Run]) -> None:
        for number, run in enumerate(runs, start=1):
            if run not in results:
                results[run] = execute(run, proxy)
                log(f"[{run.phase} {number}/{len(runs)}] {run.method} seed {run.seed} lr {run.lr:g} "
                    f"thr {run.threshold:g} views {run.views}: student {results[run]['student']:.1f} "
                    f"(zero-shot {results[run]['zeroshot']:.1f})")  # fmt: skip

    tune_seeds = [TUNE_SEED_OFFSET + i for i in range(args.tune_seeds)]
    tuning = [
        Run("tune", method, seed, lr, threshold, args.views, True)
        for method, seed, lr, threshold in itertools.product(METHODS, tune_seeds, LR_GRID, THRESHOLD_GRID)
    ]
    run_all(tuning)
    best: dict[str, Run] = {}
    for method in METHODS:
        mine = [r for r in tuning if r.method == method]
        grid = {(r.lr, r.threshold) for r in mine}
        lr, threshold = max(
            sorted(grid),
            key=lambda point: statistics.mean(results[r]["student"] for r in mine if (r.lr, r.threshold) == point),
        )
        best[method] = Run("final", method, 0, lr, threshold, args.views, False)
    ablation = [replace(best["debiaspl"], phase="ablation", seed=s, views=0, holdout=True) for s in tune_seeds]
    ablation += [replace(best["debiaspl"], phase="tune", seed=s, holdout=True) for s in tune_seeds]
    run_all(ablation)
    finals = {m: [replace(best[m], seed=s) for s in range(args.seeds)] for m in METHODS}
    run_all(finals["fixmatch"] + finals["debiaspl"])
    wall = time.perf_counter() - started

    no_views = statistics.mean(results[r]["student"] for r in ablation if r.views == 0)
    with_views = statistics.mean(results[r]["student"] for r in ablation if r.views != 0)
    command = "PYTHONPATH=. python benchmarks/zeroshot_head_digits.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    head = STUDENT_DEFAULTS["head"]
    body = [
        "## Zero-shot head student on a CLIP proxy (digits): DebiasPL vs `--no-debias`",
        "",
        "**This is a proxy for CLIP, not CLIP**: no CLIP weights can be downloaded on the development "
        "machine. The embeddings are a fixed random-feature extractor of scikit-learn's digits, and the "
        "'text classifier' is one prototype per class, each the embedding of a single random train image "
        "(deliberately weak and biased); see the docstring of `benchmarks/zeroshot_head_digits.py`. "
        "Everything after the embeddings is the code `clipdebias zeroshot --student head` runs "
        "(`clipdebias.commands.zeroshot.head.zeroshot_head`): debiased pseudo-labels, the confident set at "
        f"{SHARED_DEFAULTS.select_threshold:g}, the one training loop with CLIP's label as fallback at "
        f"{SHARED_DEFAULTS.clip_fallback:g}, the text-initialised linear head.",
        "",
        f"Reproduce: `{command}` ({len(results)} runs, {wall / 60:.1f} min wall time; "
        f"{statistics.mean(r['seconds'] for r in results.values()):.1f} s per run "
        f"with {args.threads} torch thread(s); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}). "
        f"Head defaults of `zeroshot`: {head.epochs} epochs of max(50, one pass) steps, "
        f"batch {head.batch_size} confident "
        f"+ {head.mu * head.batch_size} unlabeled, EMA {head.ema_momentum}, "
        f"prior momentum {SHARED_DEFAULTS.prior_momentum}, "
        f"{args.views} augmented views (1-pixel shifts here), "
        f"feature dropout {SHARED_DEFAULTS.feature_dropout} and noise "
        f"{SHARED_DEFAULTS.feature_noise}, logit scale {PROXY_SCALE:g}.",
        "",
        f"### Tuning on a held-out {HOLDOUT_FRACTION:.0%} of train "
        f"(seeds {tune_seeds[0]}..{tune_seeds[-1]}; val unused)",
        "",
        "Mean holdout top-1 of the head student per (learning rate, student threshold), the same grid for both "
        "methods; the learning rate is the head's `--lr`, relative to the logit scale (the classifier's SGD step is "
        f"`lr x {PROXY_SCALE:g}` here):",
        "",
        *_tuning_table(results, tuning),
        "",
        f"Augmented views, DebiasPL at its best point on the holdout: {with_views:.1f} with {args.views} views, "
        f"{no_views:.1f} with `--views 0` (feature noise only).",
        "",
        f"### On val, seeds 0..{args.seeds - 1} (mean ± std; gains paired by seed)",
        "",
        *_final_table(results, finals),
    ]
    write_results(args.results, "\n".join(body))
    log(f"wrote {args.results} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
