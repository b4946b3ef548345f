"""Time the ``zeroshot`` head student at ImageNet's shape (1000 classes, 512-d embeddings, 2 views).

    PYTHONPATH=. python benchmarks/zeroshot_head_scale.py --rows 200000 --steps 40 [--device cuda]

Random unit embeddings stand in for the cache (accuracy means nothing here, only time and memory).
The script trains the head with the `zeroshot` head defaults (batch 256 confident + 1024 unlabeled
rows per step, 2 augmented views, EMA teacher, DebiasPL, fallback) for ``--steps`` steps of one
epoch, times the steps (the first one, which builds everything, is reported apart) and projects the
time of the default ImageNet run: 10 epochs of ``ceil(unlabeled / 1024)`` steps over 1,281,167
images. The step cost does not depend on ``--rows`` (a batch is a fixed number of rows); the
rows only set the memory.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipdebias.commands.zeroshot.config import (  # noqa: E402
    SHARED_DEFAULTS,
    STUDENT_DEFAULTS,
    HeadSettings,
    LoopSettings,
)
from clipdebias.commands.zeroshot.head import ZeroShotArrays, fit_head, pseudo_label_train_rows  # noqa: E402
from clipdebias.training.loop import StepProgress, TrainStart  # noqa: E402
from clipdebias.training.step import DEFAULT_LOG_EVERY  # noqa: E402

IMAGENET_TRAIN = 1_281_167
IMAGENET_CONFIDENT_SHARE = 0.2  # assumed share of the confident set, for the projection only


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--views", type=int, default=SHARED_DEFAULTS.views)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps < 3 * DEFAULT_LOG_EVERY or args.steps % DEFAULT_LOG_EVERY:
        parser.error(f"--steps must be a multiple of {DEFAULT_LOG_EVERY}, at least {3 * DEFAULT_LOG_EVERY}")
    rng = np.random.default_rng(0)
    arrays = ZeroShotArrays(
        train_ids=np.arange(args.rows),
        train_embeddings=unit_rows(rng, args.rows, args.dim),
        train_labels=rng.integers(0, args.classes, args.rows),
        classifier=torch.from_numpy(unit_rows(rng, args.classes, args.dim)),
        logit_scale=100.0,
        eval_embeddings=unit_rows(rng, 50_000, args.dim),
        eval_labels=rng.integers(0, args.classes, 50_000),
        views=np.stack([unit_rows(rng, args.rows, args.dim) for _ in range(args.views)]) if args.views else None,
    )
    head = STUDENT_DEFAULTS["head"]
    started = time.perf_counter()
    # Random embeddings are never confident: take a class-balanced confident set instead.
    selection = pseudo_label_train_rows(
        arrays,
        SHARED_DEFAULTS.tau,
        SHARED_DEFAULTS.select_threshold,
        max(1, args.rows // (5 * args.classes)),
        args.device,
    )
    pseudo_s = time.perf_counter() - started
    loop = LoopSettings(
        tau=SHARED_DEFAULTS.tau, threshold=SHARED_DEFAULTS.threshold, prior_momentum=SHARED_DEFAULTS.prior_momentum,
        lambda_u=head.lambda_u, ema_momentum=head.ema_momentum, epochs=1, steps_per_epoch=args.steps,
        min_steps_per_epoch=SHARED_DEFAULTS.min_steps_per_epoch, batch_size=head.batch_size, mu=head.mu, lr=head.lr,
        weight_decay=head.weight_decay, warmup_epochs=0, clip_fallback=SHARED_DEFAULTS.clip_fallback, seed=0,
    )  # fmt: skip
    marks: list[float] = []

    def progress(event: object) -> None:
        if isinstance(event, (TrainStart, StepProgress)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    train_started = time.perf_counter()
    _, result = fit_head(
        arrays, selection, loop, HeadSettings("linear", 0.1, 0.5), device=args.device, progress=progress
    )
    total_s = time.perf_counter() - train_started
    # The loop reports every DEFAULT_LOG_EVERY steps: the median time between two reports, per step
    # (the first report also holds the set-up and the first, slower steps).
    step_s = float(np.median(np.diff(marks[1:]))) / DEFAULT_LOG_EVERY
    unlabeled = IMAGENET_TRAIN * (1 - IMAGENET_CONFIDENT_SHARE)
    per_epoch = math.ceil(unlabeled / (head.mu * head.batch_size))
    projected = head.epochs * per_epoch * step_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    )
    print(f"device {args.device} ({device}), torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"rows {args.rows:,} x {args.dim} + {args.views} views, {args.classes} classes")
    print(f"pseudo-labels + split of the rows: {pseudo_s:.1f} s")
    print(f"{args.steps} steps + 1 evaluation of 50,000 rows: {total_s:.1f} s; median step {step_s * 1000:.1f} ms")
    print(
        f"projected default ImageNet head run: {head.epochs} epochs x {per_epoch} steps "
        f"= {projected / 60:.1f} min of steps"
    )
    print(f"peak resident memory {peak:.2f} GiB; last-epoch mask rate {result.pseudo_labels.mask_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
