"""Time `write_report` and `compare_runs` on ImageNet-sized inputs (1000 classes).

    PYTHONPATH=. python benchmarks/bench_report.py [--rows 1281167] [--epochs 100] [--work DIR]

Fabricates (a) a pseudo-label CSV + sidecar with ``--rows`` rows over 1000 classes, labels drawn
balanced and pseudo-labels from a skewed distribution, (b) ``--runs`` training-run folders of 1000
classes and ``--epochs`` epochs, then times each step. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

NUM_CLASSES = 1000


def fabricate_csv(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    skew = np.exp(-np.linspace(0.0, 4.0, NUM_CLASSES))
    raw_shares = skew / skew.sum()
    deb_shares = 0.3 * raw_shares + 0.7 / NUM_CLASSES
    labels = rng.integers(0, NUM_CLASSES, rows)
    raw = np.where(rng.random(rows) < 0.7, labels, rng.choice(NUM_CLASSES, rows, p=raw_shares))
    debiased = np.where(rng.random(rows) < 0.75, labels, rng.choice(NUM_CLASSES, rows, p=deb_shares))
    confidence = rng.beta(5, 2, rows)
    names = [f"n{index:08d}" for index in range(NUM_CLASSES)]
    pd.DataFrame(
        {
            "index": np.arange(rows),
            "path": [f"train/{i}.JPEG" for i in range(rows)],
            "label": labels,
            "pseudo_label": debiased,
            "pseudo_class": np.asarray(names)[debiased],
            "confidence": confidence,
            "raw_pseudo_label": raw,
            "raw_confidence": rng.beta(5, 2, rows),
            "selected": confidence >= 0.95,
        }
    ).to_csv(path, index=False)
    path.with_suffix(".json").write_text(
        json.dumps({"classes": names, "tau": 0.4, "threshold": 0.95, "prior": raw_shares.tolist()})
    )
    return path


def fabricate_run(root: Path, epochs: int, method: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    skew = np.exp(-np.linspace(0.0, 3.0, NUM_CLASSES))
    prior = skew / skew.sum()
    lines = []
    for epoch in range(1, epochs + 1):
        counts = rng.multinomial(500_000, 0.5 * prior + 0.5 / NUM_CLASSES)
        lines.append(
            json.dumps(
                {
                    "epoch": epoch,
                    "loss": 1.0 / epoch,
                    "loss_x": 0.5 / epoch,
                    "loss_u": 0.5 / epoch,
                    "mask_rate": 0.5,
                    "pseudo_label_accuracy": 70.0,
                    "pseudo_label_counts": counts.tolist(),
                    "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
                    "prior": prior.tolist() if method == "debiaspl" else None,
                    "prior_entropy": None,
                    "top1": 50 + epoch / 10,
                    "top5": 80.0,
                }
            )
        )
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (root / "metrics.json").write_text(
        json.dumps(
            {
                "method": method,
                "dataset": "imagenet",
                "num_classes": NUM_CLASSES,
                "top1": 60 + rng.normal(),
                "top5": 85.0,
                "per_class_top1": rng.uniform(0, 100, NUM_CLASSES).tolist(),
                "seed": seed,
                "pseudo_labels": {
                    "mask_rate": 0.5,
                    "accuracy": 70.0,
                    "class_counts": json.loads(lines[-1])["pseudo_label_counts"],
                    "imbalance_ratio": 3.0,
                },
            }
        )
    )
    return root


def timed(label: str, action):
    start = time.perf_counter()
    result = action()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_281_167, help="rows of the pseudo-label CSV (ImageNet train)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=6, help="runs for compare (half FixMatch, half DebiasPL)")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the fabricated inputs (default: a temp dir)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="clipdebias-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    from clipdebias.reporting.compare import compare_runs
    from clipdebias.reporting.report import write_report

    csv = timed(f"fabricate CSV ({args.rows} rows)", lambda: fabricate_csv(work / "imagenet.csv", args.rows))
    print(f"  CSV size: {csv.stat().st_size / 1e6:.0f} MB")
    timed("report of the CSV", lambda: write_report(csv))
    runs = [
        fabricate_run(work / f"run{i}", args.epochs, "debiaspl" if i % 2 else "fixmatch", i // 2)
        for i in range(args.runs)
    ]
    timed(f"report of a run ({args.epochs} epochs)", lambda: write_report(runs[1]))
    timed(f"compare {args.runs} runs", lambda: compare_runs(runs, work / "compare"))
    print(f"inputs and outputs under {work}")


if __name__ == "__main__":
    main()
