"""``clipdebias zeroshot``: unlabeled images -> debiased CLIP pseudo-labels -> a student.

Options -> :func:`~clipdebias.commands.zeroshot.config.resolve_zeroshot_config` -> ``run_zeroshot``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import Option

from clipdebias.cli import options
from clipdebias.cli.render import imbalance_text, percent, print_report_outcome, skipped_text, speed_text
from clipdebias.cli.rich_progress import RichProgress
from clipdebias.cli.train_view import TrainProgressView
from clipdebias.config import defaults

_SHARED = defaults.SHARED_DEFAULTS
_STUDENTS = options.default("the student's, see docs/usage.md")
# Printed whenever zeroshot gets --precision, for the release after the renames: it meant encoding.
_PRECISION_NOTE = (
    "note: zeroshot's --precision now sets the training precision, as in ssl; "
    "CLIP's encoding precision is --encode-precision"
)


def _summary(metrics: dict[str, Any], out: str) -> Table:
    pl = metrics["pseudo_labels"]
    train_pl = metrics["train_pseudo_labels"]
    table = Table(
        title=f"zeroshot: {metrics['student']} student ({metrics['method']}) on {metrics['dataset']}", show_header=False
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    known = [v for v in metrics["per_class_top1"] if v is not None]
    split = f"{metrics['eval_split']}, {metrics['eval_images']} images"
    rows = [
        ("correction of CLIP's labels", _correction_text(metrics)),
        (f"CLIP zero-shot top-1 ({split})", percent(metrics["zeroshot_top1"])),
        ("CLIP zero-shot top-1, corrected", percent(metrics["zeroshot_debiased_top1"])),
        ("student top-1", percent(metrics["student_top1"])),
        ("student top-5", percent(metrics["top5"])),
        ("student worst class top-1", percent(min(known)) if known else "-"),
        ("confident / unlabeled train images", f"{metrics['labeled_images']:,} / {metrics['unlabeled_images']:,}"),
        ("unreadable images (skipped)", skipped_text(metrics.get("skipped_images", 0))),
        ("CLIP labels correct on the confident set", percent(train_pl["confident_top1"])),
        ("pseudo-labels: mask rate (last epoch)", f"{pl['mask_rate']:.3f}"),
        ("pseudo-labels: accuracy", percent(pl["accuracy"])),
        ("pseudo-labels: imbalance ratio", imbalance_text(pl["imbalance_ratio"])),
        ("epochs / steps", f"{metrics['epochs']} / {metrics['steps']}"),
        ("training time", f"{metrics['elapsed_s']:.1f} s"),
        ("training speed", speed_text(metrics)),
        ("run folder", escape(out)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _correction_text(metrics: dict[str, Any]) -> str:
    mode = metrics.get("debias", "paper")
    text = f"paper, tau {metrics['tau']:g}" if mode == "paper" else mode
    knn = metrics.get("knn") or {}
    if knn.get("k"):
        text += f"; kNN K {knn['k']}, alpha {knn['alpha']:g}, {knn['steps']} step(s)"
    return text


def zeroshot_command(
    dataset: options.Dataset,
    out: Annotated[
        Path,
        Option(
            "--out",
            help="Run folder: config, pseudo-labels, splits, metrics, checkpoint, report.",
            show_default=False,
        ),
    ],
    data_root: options.DataRoot = None,
    model: options.Model = None,
    pretrained: options.Pretrained = None,
    quick_gelu: options.QuickGelu = None,
    classnames: options.Classnames = None,
    templates: options.Templates = None,
    logit_scale: options.LogitScale = None,
    student: Annotated[
        str | None,
        Option(
            "--student",
            help="head (on frozen embeddings), clip (fine-tune the image tower) or resnet50."
            + options.default(defaults.STUDENT),
        ),
    ] = None,
    head: Annotated[
        str | None,
        Option("--head", help="Head of the head/clip students: linear or mlp." + options.default(_SHARED.head)),
    ] = None,
    views: Annotated[
        int | None,
        Option(
            "--views",
            help="head: augmented-view embeddings cached per train image; 0 = feature noise only."
            + options.default(_SHARED.views),
        ),
    ] = None,
    feature_dropout: Annotated[
        float | None,
        Option(
            "--feature-dropout",
            help="head: dropout on the strong view's embedding." + options.default(_SHARED.feature_dropout),
        ),
    ] = None,
    feature_noise: Annotated[
        float | None,
        Option(
            "--feature-noise",
            help="head: Gaussian noise on the strong view, relative to its norm."
            + options.default(_SHARED.feature_noise),
        ),
    ] = None,
    select_threshold: Annotated[
        float | None,
        Option(
            "--select-threshold",
            help="Debiased CLIP confidence at which a train image joins the confident set."
            + options.default(_SHARED.select_threshold),
        ),
    ] = None,
    select_topk_per_class: Annotated[
        int | None,
        Option(
            "--select-topk-per-class",
            help="Instead: the K most confident images of each CLIP class form the confident set.",
        ),
    ] = None,
    clip_fallback: Annotated[
        float | None,
        Option(
            "--clip-fallback",
            help="CLIP confidence at which CLIP's label replaces an unsure student pseudo-label."
            + options.default(_SHARED.clip_fallback),
        ),
    ] = None,
    tau: Annotated[
        float | None,
        Option(
            "--tau",
            help="DebiasPL strength for CLIP's labels and the training; 0 = no debiasing."
            + options.default(_SHARED.tau),
        ),
    ] = None,
    no_debias: Annotated[
        bool, Option("--no-debias", help="The same pipeline without any correction (--debias none), for comparison.")
    ] = False,
    debias: Annotated[
        str | None,
        Option(
            "--debias",
            help="How CLIP's labels and the training's pseudo-labels are corrected: paper (DebiasPL, --tau), "
            "balance (offsets to a uniform class prior offline, distribution alignment online) or none."
            + options.default(defaults.DEBIAS),
        ),
    ] = None,
    knn: options.Knn = defaults.KNN,
    knn_alpha: options.KnnAlpha = None,
    knn_steps: options.KnnSteps = None,
    threshold: Annotated[
        float | None,
        Option("--threshold", help="Student pseudo-label confidence threshold." + options.default(_SHARED.threshold)),
    ] = None,
    prior_momentum: Annotated[
        float | None,
        Option("--prior-momentum", help="EMA momentum of the class prior." + options.default(_SHARED.prior_momentum)),
    ] = None,
    lambda_u: Annotated[float | None, Option("--lambda-u", help="Weight of the unlabeled loss." + _STUDENTS)] = None,
    mu: Annotated[int | None, Option("--mu", help="Unlabeled / confident batch size ratio." + _STUDENTS)] = None,
    batch_size: Annotated[
        int | None, Option("--batch-size", help="Confident-set training batch size." + _STUDENTS)
    ] = None,
    epochs: Annotated[int | None, Option("--epochs", help="Number of epochs." + _STUDENTS)] = None,
    steps_per_epoch: Annotated[
        int | None,
        Option(
            "--steps-per-epoch",
            help="Steps per epoch."
            + options.default(f"one pass over the unlabeled images, at least {_SHARED.min_steps_per_epoch}"),
        ),
    ] = None,
    lr: Annotated[
        float | None,
        Option("--lr", help="Peak learning rate, cosine schedule; head: relative to the logit scale." + _STUDENTS),
    ] = None,
    weight_decay: Annotated[float | None, Option("--weight-decay", help="Weight decay." + _STUDENTS)] = None,
    warmup_epochs: Annotated[
        int | None, Option("--warmup-epochs", help="Linear LR warm-up epochs." + _STUDENTS)
    ] = None,
    ema_momentum: Annotated[float | None, Option("--ema-momentum", help="EMA teacher momentum." + _STUDENTS)] = None,
    init_weights: Annotated[
        Path | None,
        Option("--init-weights", help="resnet50: start from this state dict (e.g. MoCo v2 / MoCo-EMAN)."),
    ] = None,
    image_size: Annotated[
        int | None,
        Option(
            "--image-size",
            help="resnet50: training image side in pixels."
            + options.default(defaults.STUDENT_DEFAULTS["resnet50"].image_size),
        ),
    ] = None,
    multiviews: Annotated[
        bool | None,
        Option(
            "--multiviews/--single-view",
            help="clip/resnet50: two weak + two strong views per unlabeled image."
            + options.default("resnet50 on, clip off"),
        ),
    ] = None,
    precision: Annotated[
        str | None,
        Option(
            "--precision",
            help=f"Training of the clip/resnet50 students: {', '.join(defaults.ZEROSHOT_PRECISIONS)}; "
            "auto = bf16 autocast on a GPU, else fp32 (no fp16: no gradient scaling here)."
            + options.default(defaults.ZEROSHOT_PRECISION),
        ),
    ] = None,
    seed: options.Seed = defaults.SEED,
    device: options.Device = defaults.DEVICE,
    decode: options.Decode = defaults.DECODE,
    encode_precision: options.EncodePrecision = None,
    workers: Annotated[
        int | None,
        Option(
            "--workers",
            min=0,
            help="Image decoding processes."
            + options.default(f"encoding {defaults.ENCODE_WORKERS_TEXT}; training CPUs - 1, at most 8"),
        ),
    ] = None,
    threads: options.Threads = None,
    encode_batch_size: Annotated[
        int, Option("--encode-batch-size", min=1, help="Images per CLIP forward pass while encoding.")
    ] = defaults.ENCODE_BATCH_SIZE,
    eval_batch_size: options.EvalBatchSize = defaults.EVAL_BATCH_SIZE,
    cache_dir: options.CacheDir = None,
    report: options.RunReport = True,
    resume: options.Resume = False,
    old_amp: options.OldAmp = None,
) -> None:
    # the implementation loads torch: imported here, so that --help and option errors stay fast
    from clipdebias.commands.zeroshot.config import resolve_zeroshot_config
    from clipdebias.commands.zeroshot.run import run_zeroshot
    from clipdebias.training.loop import TrainStart
    from clipdebias.utils.distributed import is_main_process

    if precision is not None:
        options.say(_PRECISION_NOTE)
    if old_amp is not None:
        old_flag, new_value = ("--amp", "bf16") if old_amp else ("--no-amp", "fp32")
        precision = options.renamed(precision, new_value, old_flag, f"--precision {new_value}")
    config = resolve_zeroshot_config(
        dataset, out, student=student, data_root=data_root, model=model, pretrained=pretrained, quick_gelu=quick_gelu,
        encode_precision=encode_precision, classnames=classnames, templates=templates, logit_scale=logit_scale,
        head=head, views=views, feature_dropout=feature_dropout, feature_noise=feature_noise,
        select_threshold=select_threshold, select_topk_per_class=select_topk_per_class, clip_fallback=clip_fallback,
        tau=tau, no_debias=no_debias, debias=debias, knn=knn, knn_alpha=knn_alpha, knn_steps=knn_steps,
        threshold=threshold, prior_momentum=prior_momentum, lambda_u=lambda_u, mu=mu,
        batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, ema_momentum=ema_momentum, init_weights=init_weights, image_size=image_size,
        multiviews=multiviews, precision=precision, seed=seed, device=device, workers=workers, threads=threads,
        encode_batch_size=encode_batch_size, eval_batch_size=eval_batch_size, cache_dir=cache_dir, report=report,
        resume=resume, decode=decode,
    )  # fmt: skip
    errors = Console(stderr=True)
    with RichProgress(errors) as progress, TrainProgressView(errors) as view:

        def on_train(event: Any) -> None:
            if isinstance(event, TrainStart):
                progress.close()  # rich draws one live display at a time: the encoding bars end here
            view(event)

        run = run_zeroshot(config, progress=progress, train_progress=on_train)
    if not is_main_process():  # under torchrun every rank returns the same metrics; rank 0 shows them
        return
    console = Console()
    console.print(_summary(run.metrics, config.out))
    console.print(escape(f"wrote {run.pseudolabels} and the run folder {config.out}"), soft_wrap=True)
    print_report_outcome(console, config.out, run.report, run.report_error)
