"""``clipdebias pseudolabel``: debiased zero-shot pseudo-labels of a split, as CSV."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import Option

from clipdebias.cli import options
from clipdebias.cli.render import percent, print_report_outcome
from clipdebias.cli.rich_progress import RichProgress
from clipdebias.config import defaults

if TYPE_CHECKING:
    import numpy as np


def _extreme(counts: np.ndarray, classes: list[str], largest: bool) -> str:
    index = int(counts.argmax() if largest else counts.argmin())
    return escape(f"{classes[index]} ({int(counts[index]):,})")


def pseudolabel_command(
    dataset: options.Dataset,
    out: Annotated[
        str,
        Option("--out", help="The pseudo-label CSV to write (a FILE.json sidecar goes beside it).", show_default=False),
    ],
    data_root: options.DataRoot = None,
    split: options.Split = defaults.SPLIT,
    model: options.Model = None,
    pretrained: options.Pretrained = None,
    quick_gelu: options.QuickGelu = None,
    classnames: options.Classnames = None,
    templates: options.Templates = None,
    debias: Annotated[
        str,
        Option(
            "--debias",
            help="How CLIP's bias is corrected: paper (z - tau log q), balance (per-class offsets that make "
            "the labels follow --target-prior, uniform by default) or none (plain zero-shot labels).",
        ),
    ] = defaults.DEBIAS,
    tau: Annotated[
        float | None,
        Option(
            "--tau",
            min=0.0,
            help="Debiasing strength of --debias paper; 0 gives plain zero-shot labels."
            + options.default(defaults.TAU),
        ),
    ] = None,
    target_prior: Annotated[
        str | None,
        Option(
            "--target-prior",
            help="--debias balance: a file of one frequency or count per class, in label order (or a .npy)."
            + options.default("uniform"),
        ),
    ] = None,
    select_threshold: Annotated[
        float | None,
        Option(
            "--select-threshold",
            help="Rows whose debiased CLIP confidence reaches this are 'selected'."
            + options.default(defaults.SELECT_THRESHOLD),
        ),
    ] = None,
    logit_scale: options.LogitScale = None,
    logits: Annotated[
        str | None,
        Option("--logits", help="Use a teacher's [N, C] logits (.npy, rows in dataset order) instead of CLIP."),
    ] = None,
    knn: options.Knn = defaults.KNN,
    knn_alpha: options.KnnAlpha = None,
    knn_steps: options.KnnSteps = None,
    embeddings: Annotated[
        str | None,
        Option(
            "--embeddings",
            help="With --logits and --knn: the images' [N, D] embeddings (.npy, rows in dataset order) "
            "whose nearest neighbours refine the teacher.",
        ),
    ] = None,
    reference_format: Annotated[
        str | None,
        Option(
            "--reference-format",
            help="Also write the files of the CVPR 2022 code into this folder: its two pseudo-label CSVs "
            "(Index = torchvision ImageFolder order) and CLIPRankedPredictions.csv.",
        ),
    ] = None,
    reference_top_k: Annotated[
        int,
        Option("--reference-top-k", min=1, help="Classes per image in CLIPRankedPredictions.csv (--reference-format)."),
    ] = defaults.REFERENCE_TOP_K,
    device: options.Device = defaults.DEVICE,
    decode: options.Decode = defaults.DECODE,
    encode_precision: options.EncodePrecision = None,
    encode_batch_size: options.EncodeBatchSize = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    cache_dir: options.CacheDir = None,
    chunk_size: options.ChunkSize = None,
    chunk_rows: Annotated[
        int, Option("--chunk-rows", min=1, help="Rows of logits held in memory at once.")
    ] = defaults.CHUNK_ROWS,
    report: Annotated[
        bool, Option("--report/--no-report", help="Write FILE_report/ (charts, report.md) beside the CSV.")
    ] = True,
    overwrite: Annotated[
        bool,
        Option("--overwrite", help="Replace an existing --out CSV, its sidecar and --reference-format files."),
    ] = False,
    old_threshold: options.OldThreshold = None,
    old_precision: options.OldPrecision = None,
    old_batch_size: options.OldBatchSize = None,
    old_num_workers: options.OldNumWorkers = None,
) -> None:
    # the implementation loads torch: imported here, so that --help and option errors stay fast
    from clipdebias.clip.backbone import BackboneConfig
    from clipdebias.commands.pseudolabel import PseudoLabelConfig, run_pseudolabel
    from clipdebias.metrics import imbalance_ratio
    from clipdebias.reporting.report import try_write_report

    select_threshold = options.renamed(select_threshold, old_threshold, "--threshold", "--select-threshold")
    encode_precision = options.renamed(encode_precision, old_precision, "--precision", "--encode-precision")
    encode_batch_size = options.renamed(encode_batch_size, old_batch_size, "--batch-size", "--encode-batch-size")
    workers = options.renamed(workers, old_num_workers, "--num-workers", "--workers")
    if logits is not None:  # nothing of CLIP runs: an option of it that was given is a mistake
        options.refuse_given(
            "--logits", "the teacher's logits replace CLIP", model=model, pretrained=pretrained,
            quick_gelu=quick_gelu, templates=templates, logit_scale=logit_scale, encode_precision=encode_precision,
            encode_batch_size=encode_batch_size, workers=workers, chunk_size=chunk_size,
            cache_dir=cache_dir if embeddings is None else None,  # --embeddings' neighbours are stored there
        )  # fmt: skip
    options.refuse_knn_settings_without_knn(knn, knn_alpha, knn_steps)
    config = PseudoLabelConfig(
        dataset=dataset,
        data_root=data_root,
        out=out,
        split=split,
        backbone=BackboneConfig(
            model=options.or_default(model, defaults.MODEL),
            pretrained=options.or_default(pretrained, defaults.PRETRAINED),
            precision=options.or_default(encode_precision, defaults.ENCODE_PRECISION),
            device=device,
            quick_gelu=quick_gelu,
        ),
        classnames=classnames,
        templates=templates,
        tau=tau,
        debias=debias,
        target_prior=target_prior,
        select_threshold=options.or_default(select_threshold, defaults.SELECT_THRESHOLD),
        logit_scale=logit_scale,
        logits=logits,
        knn=knn,
        knn_alpha=options.or_default(knn_alpha, defaults.KNN_ALPHA),
        knn_steps=options.or_default(knn_steps, defaults.KNN_STEPS),
        embeddings=embeddings,
        reference_dir=reference_format,
        reference_top_k=reference_top_k,
        cache_dir=cache_dir,
        encode_batch_size=options.or_default(encode_batch_size, defaults.ENCODE_BATCH_SIZE),
        workers=workers,
        threads=threads,
        chunk_size=options.or_default(chunk_size, defaults.CHUNK_SIZE),
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        decode=decode,
    )
    with RichProgress() as progress:
        run = run_pseudolabel(config, progress)
    summary = run.summary
    console = Console()
    setup = Table(title=f"clipdebias pseudolabel: {dataset} {split}", show_header=False)
    setup.add_column("item", style="bold")
    setup.add_column("value")
    for name, value in run.backbone_rows:
        setup.add_row(name, escape(value))
    unreadable = run.num_images - summary.num_rows
    setup.add_row("images", f"{run.num_images:,}" + (f" ({unreadable:,} unreadable, left out)" if unreadable else ""))
    if run.encode is not None:
        encoded = (
            "cache complete, nothing encoded" if run.encode.was_complete else f"{run.encode.encoded:,} encoded now"
        )
        setup.add_row("embeddings", escape(f"{encoded} ({run.encode.entry.path})"))
    console.print(setup)

    table = Table(title="pseudo-labels")
    table.add_column("")
    table.add_column("plain zero-shot (tau 0)", justify="right")
    table.add_column(run.correction, justify="right")
    if summary.zeroshot_top1 is not None:
        table.add_row("top-1 vs ground truth", percent(summary.zeroshot_top1), percent(summary.zeroshot_debiased_top1))
    table.add_row(
        "largest class", _extreme(summary.raw_counts, run.classes, True), _extreme(summary.counts, run.classes, True)
    )
    table.add_row(
        "smallest class", _extreme(summary.raw_counts, run.classes, False), _extreme(summary.counts, run.classes, False)
    )
    table.add_row(
        "imbalance (largest / smallest)",
        f"{imbalance_ratio(summary.raw_counts):.1f}",
        f"{imbalance_ratio(summary.counts):.1f}",
    )
    console.print(table)

    share = summary.num_selected / max(summary.num_rows, 1) * 100
    selected = (
        f"{summary.num_selected:,} of {summary.num_rows:,} rows ({share:.1f}%) "
        f"have debiased confidence >= {run.threshold:g}"
    )
    if summary.selected_top1 is not None:
        selected += f"; {summary.selected_top1:.2f}% of them are correct"
    console.print(f"selected: {selected}")
    if run.balance is not None:
        gap = float(abs(run.balance.marginal - run.balance.target).max()) * 100
        done = "converged" if run.balance.converged else "stopped at the pass limit"
        passes = run.balance.iterations
        console.print(
            f"balance: {passes:,} pass{'' if passes == 1 else 'es'} over the logits, {done}; "
            f"largest gap to the target share {gap:.3f} points"
        )
    console.print(escape(f"wrote {run.csv} and {run.sidecar}"))
    if run.reference is not None:
        console.print(escape(f"wrote {', '.join(map(str, run.reference))} (reference format)"))
    if report:
        print_report_outcome(console, run.csv, *try_write_report(run.csv))
