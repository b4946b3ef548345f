"""``clipdebias ssl``: FixMatch + DebiasPL semi-supervised training (options -> config -> run_ssl)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from clipdebias.cli.render import imbalance_text, percent, skipped_text, speed_text
from clipdebias.cli.train_view import TrainProgressView

_DEFAULT = "default: the dataset's, see docs/usage.md"


def _summary(metrics: dict[str, Any], out: str) -> Table:
    pl = metrics["pseudo_labels"]
    table = Table(title=f"ssl: {metrics['method']} on {metrics['dataset']}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    known = [v for v in metrics["per_class_top1"] if v is not None]
    rows = [
        ("labeled / unlabeled images", f"{metrics['labeled_images']} / {metrics['unlabeled_images']}"),
        ("unreadable images (skipped)", skipped_text(metrics.get("skipped_images", 0))),
        (f"top-1 ({metrics['eval_split']}, {metrics['eval_images']} images)", percent(metrics["top1"])),
        ("top-5", percent(metrics["top5"])),
        ("worst class top-1", percent(min(known) if known else None)),
        ("pseudo-labels: mask rate", f"{pl['mask_rate']:.3f}"),
        ("pseudo-labels: accuracy", percent(pl["accuracy"])),
        ("pseudo-labels: imbalance ratio", imbalance_text(pl["imbalance_ratio"])),
        ("epochs / steps", f"{metrics['epochs']} / {metrics['steps']}"),
        ("training time", f"{metrics['elapsed_s']:.1f} s"),
        ("training speed", speed_text(metrics)),
        ("run folder", out),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def ssl_command(
    dataset: str = typer.Option(..., "--dataset", help="digits, cifar10, cifar100, imagenet or imagefolder."),
    out: Path = typer.Option(..., "--out", help="Run folder: config, splits, metrics, checkpoint."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset root (not for digits)."),
    labels: str | None = typer.Option(None, "--labels", help=f"Label budget: 0.2pct, 1pct, N-per-class ({_DEFAULT})."),
    labeled_index: Path | None = typer.Option(
        None, "--labeled-index", help="Reuse a labeled_index.csv instead of drawing a split."
    ),
    holdout: float = typer.Option(
        0.0, "--holdout", help="Evaluate on this stratified fraction of train, held out, instead of val (for tuning)."
    ),
    tau: float | None = typer.Option(None, "--tau", help="DebiasPL strength; 0 = FixMatch (default 0.4)."),
    threshold: float | None = typer.Option(
        None, "--threshold", help=f"Pseudo-label confidence threshold ({_DEFAULT})."
    ),
    prior_momentum: float | None = typer.Option(
        None, "--prior-momentum", help=f"EMA momentum of the class prior ({_DEFAULT})."
    ),
    lambda_u: float | None = typer.Option(None, "--lambda-u", help=f"Weight of the unlabeled loss ({_DEFAULT})."),
    mu: int | None = typer.Option(None, "--mu", help=f"Unlabeled / labeled batch size ratio ({_DEFAULT})."),
    batch_size: int | None = typer.Option(None, "--batch-size", help=f"Labeled batch size ({_DEFAULT})."),
    epochs: int | None = typer.Option(None, "--epochs", help=f"Number of epochs ({_DEFAULT})."),
    steps_per_epoch: int | None = typer.Option(None, "--steps-per-epoch", help=f"Steps per epoch ({_DEFAULT})."),
    lr: float | None = typer.Option(None, "--lr", help=f"Peak learning rate, cosine schedule ({_DEFAULT})."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help=f"SGD weight decay ({_DEFAULT})."),
    warmup_epochs: int | None = typer.Option(None, "--warmup-epochs", help=f"Linear LR warm-up epochs ({_DEFAULT})."),
    ema_momentum: float | None = typer.Option(None, "--ema-momentum", help=f"EMA teacher momentum ({_DEFAULT})."),
    arch: str | None = typer.Option(None, "--arch", help=f"Student: cnn, resnet18, resnet50 ({_DEFAULT})."),
    init_weights: Path | None = typer.Option(None, "--init-weights", help="Start the student from this state dict."),
    image_size: int | None = typer.Option(None, "--image-size", help=f"Training image side in pixels ({_DEFAULT})."),
    multiviews: bool | None = typer.Option(
        None, "--multiviews/--single-view", help=f"Two weak + two strong views per unlabeled image ({_DEFAULT})."
    ),
    no_debias: bool = typer.Option(False, "--no-debias", help="Plain FixMatch (the same loop with --tau 0)."),
    clip_pseudolabels: Path | None = typer.Option(
        None, "--clip-pseudolabels", help="Pseudo-label CSV used as fallback labels (DebiasPL w/ CLIP)."
    ),
    clip_fallback: float | None = typer.Option(
        None, "--clip-fallback", help="Fallback confidence needed to label an uncertain row (default 0.3)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the labeled split, the initialisation and the batches."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="DataLoader worker processes per training process (default: 0 for digits, else its CPU cores - 1, at most 8).",
    ),
    prefetch_factor: int | None = typer.Option(
        None, "--prefetch-factor", help="Batches each DataLoader worker loads ahead (default 4)."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or autocast to bf16 / fp16 (fp16 with gradient scaling) for speed on GPUs."
    ),
    torch_compile: bool = typer.Option(
        False, "--compile", help="torch.compile the student and teacher (slow start, may be faster per step)."
    ),
    sync_bn: bool = typer.Option(
        False, "--sync-bn", help="SyncBatchNorm across GPUs under torchrun (CUDA only; default: per-GPU BatchNorm)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/report/ (charts, report.md) at the end."),
) -> None:
    from clipdebias.cli.render import print_report_outcome
    from clipdebias.commands.ssl import resolve_ssl_config, run_ssl
    from clipdebias.reporting.report import try_write_report
    from clipdebias.utils.distributed import is_main_process

    config = resolve_ssl_config(
        dataset,
        out,
        data_root=data_root,
        labels=labels,
        labeled_index=labeled_index,
        holdout=holdout,
        tau=tau,
        threshold=threshold,
        prior_momentum=prior_momentum,
        lambda_u=lambda_u,
        mu=mu,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        ema_momentum=ema_momentum,
        arch=arch,
        init_weights=init_weights,
        image_size=image_size,
        multiviews=multiviews,
        no_debias=no_debias,
        clip_pseudolabels=clip_pseudolabels,
        clip_fallback=clip_fallback,
        seed=seed,
        device=device,
        workers=workers,
        resume=resume,
        prefetch_factor=prefetch_factor,
        precision=precision,
        compile=torch_compile,
        sync_bn=sync_bn,
    )
    with TrainProgressView(Console(stderr=True)) as view:
        metrics = run_ssl(config, progress=view)
    if is_main_process():  # under torchrun every rank returns the same metrics; rank 0 shows them
        console = Console()
        console.print(_summary(metrics, config.out))
        if report:
            print_report_outcome(console, config.out, *try_write_report(config.out))
