"""``clipdebias ssl``: FixMatch + DebiasPL (or the balanced variant) semi-supervised training
(options -> config -> run_ssl)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from rich.console import Console
from rich.table import Table
from typer import Option

from clipdebias.cli import options
from clipdebias.cli.render import imbalance_text, percent, print_report_outcome, skipped_text, speed_text
from clipdebias.cli.train_view import TrainProgressView
from clipdebias.config import defaults

_DATASETS = options.default("the dataset's, see docs/usage.md")


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
    dataset: options.Dataset,
    out: Annotated[
        Path, Option("--out", help="Run folder: config, splits, metrics, checkpoint, report.", show_default=False)
    ],
    data_root: options.DataRoot = None,
    labels: Annotated[
        str | None, Option("--labels", help="Label budget: 0.2pct, 1pct, N-per-class." + _DATASETS)
    ] = None,
    labeled_index: Annotated[
        Path | None, Option("--labeled-index", help="Reuse a labeled_index.csv instead of drawing a split.")
    ] = None,
    holdout: Annotated[
        float,
        Option("--holdout", help="Evaluate on this stratified fraction of train, held out, instead of val (tuning)."),
    ] = defaults.HOLDOUT,
    debias: Annotated[
        str | None,
        Option(
            "--debias",
            help="How the pseudo-labels are corrected: paper (DebiasPL, z - tau log q), balance (running "
            "per-class offsets that make the pseudo-labels' mean uniform), none (FixMatch); --tau alone means "
            "paper." + _DATASETS,
        ),
    ] = None,
    tau: Annotated[
        float | None, Option("--tau", help="DebiasPL strength of --debias paper; 0 = FixMatch." + _DATASETS)
    ] = None,
    threshold: Annotated[
        float | None, Option("--threshold", help="Pseudo-label confidence threshold." + _DATASETS)
    ] = None,
    prior_momentum: Annotated[
        float | None, Option("--prior-momentum", help="EMA momentum of the class prior." + _DATASETS)
    ] = None,
    lambda_u: Annotated[float | None, Option("--lambda-u", help="Weight of the unlabeled loss." + _DATASETS)] = None,
    mu: Annotated[int | None, Option("--mu", help="Unlabeled / labeled batch size ratio." + _DATASETS)] = None,
    batch_size: Annotated[int | None, Option("--batch-size", help="Labeled training batch size." + _DATASETS)] = None,
    epochs: Annotated[int | None, Option("--epochs", help="Number of epochs." + _DATASETS)] = None,
    steps_per_epoch: Annotated[int | None, Option("--steps-per-epoch", help="Steps per epoch." + _DATASETS)] = None,
    lr: Annotated[float | None, Option("--lr", help="Peak learning rate, cosine schedule." + _DATASETS)] = None,
    weight_decay: Annotated[float | None, Option("--weight-decay", help="SGD weight decay." + _DATASETS)] = None,
    warmup_epochs: Annotated[
        int | None, Option("--warmup-epochs", help="Linear LR warm-up epochs." + _DATASETS)
    ] = None,
    ema_momentum: Annotated[float | None, Option("--ema-momentum", help="EMA teacher momentum." + _DATASETS)] = None,
    teacher_bn: Annotated[
        str | None,
        Option(
            "--teacher-bn",
            help=f"The EMA teacher's BatchNorm statistics: {' or '.join(defaults.TEACHER_BN_MODES)} (averaged, "
            "or the student's copied each step)." + _DATASETS,
        ),
    ] = None,
    ema_warmup: Annotated[
        bool | None,
        Option(
            "--ema-warmup/--no-ema-warmup",
            help="EMA momentum min(m, (1 + t) / (10 + t)) at step t (the mean-teacher warm-up)." + _DATASETS,
        ),
    ] = None,
    arch: Annotated[str | None, Option("--arch", help="Student: cnn, resnet18, resnet50." + _DATASETS)] = None,
    init_weights: Annotated[
        Path | None, Option("--init-weights", help="Start the student from this state dict.")
    ] = None,
    image_size: Annotated[int | None, Option("--image-size", help="Training image side in pixels." + _DATASETS)] = None,
    multiviews: Annotated[
        bool | None,
        Option("--multiviews/--single-view", help="Two weak + two strong views per unlabeled image." + _DATASETS),
    ] = None,
    no_debias: Annotated[
        bool, Option("--no-debias", help="Plain FixMatch: --debias none (the same as --tau 0).")
    ] = False,
    clip_pseudolabels: Annotated[
        Path | None,
        Option("--clip-pseudolabels", help="Pseudo-label CSV used as fallback labels (DebiasPL w/ CLIP)."),
    ] = None,
    clip_fallback: Annotated[
        float | None,
        Option(
            "--clip-fallback",
            help="CLIP confidence needed to label an uncertain row." + options.default(defaults.CLIP_FALLBACK),
        ),
    ] = None,
    seed: Annotated[
        int, Option("--seed", help="Seed of the labeled split, the initialisation and the batches.")
    ] = defaults.SEED,
    device: options.Device = defaults.DEVICE,
    workers: Annotated[
        int | None,
        Option(
            "--workers",
            help="DataLoader processes per training process." + options.default(defaults.TRAIN_WORKERS_TEXT),
        ),
    ] = None,
    threads: options.Threads = None,
    prefetch_factor: Annotated[
        int, Option("--prefetch-factor", help="Batches each DataLoader worker loads ahead.")
    ] = defaults.PREFETCH_FACTOR,
    precision: Annotated[
        str,
        Option(
            "--precision",
            help=f"Training: {', '.join(defaults.PRECISIONS)}; bf16 / fp16 autocast (fp16 with gradient scaling).",
        ),
    ] = defaults.TRAIN_PRECISION,
    torch_compile: Annotated[
        bool, Option("--compile", help="torch.compile the student and teacher (slow start, may be faster per step).")
    ] = False,
    sync_bn: Annotated[
        bool, Option("--sync-bn", help="SyncBatchNorm across GPUs under torchrun (CUDA only; else per-GPU).")
    ] = False,
    resume: options.Resume = False,
    report: options.RunReport = True,
) -> None:
    # the implementation loads torch: imported here, so that --help and option errors stay fast
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
        debias=debias,
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
        teacher_bn=teacher_bn,
        ema_warmup=ema_warmup,
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
        threads=threads,
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
