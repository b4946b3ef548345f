"""``clipdebias encode``: encode every image of a split once into the embedding cache."""

from __future__ import annotations

from typing import Annotated

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import Option

from clipdebias.cli import options
from clipdebias.cli.rich_progress import RichProgress
from clipdebias.config import defaults

_DECODERS = {
    "gpu": "gpu: JPEGs on the model's device, other files by Pillow (--decode)",
    "cpu": "cpu: Pillow, large JPEGs at a reduced size (--decode)",
}


def encode_command(
    dataset: options.Dataset,
    data_root: options.DataRoot = None,
    split: options.Split = defaults.SPLIT,
    model: options.Model = None,
    pretrained: options.Pretrained = None,
    quick_gelu: options.QuickGelu = None,
    device: options.Device = defaults.DEVICE,
    decode: options.Decode = defaults.DECODE,
    encode_precision: options.EncodePrecision = None,
    encode_batch_size: options.EncodeBatchSize = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    cache_dir: options.CacheDir = None,
    chunk_size: options.ChunkSize = None,
    rebuild: Annotated[bool, Option("--rebuild", help="Discard this split's cache entry and encode it again.")] = False,
    old_precision: options.OldPrecision = None,
    old_batch_size: options.OldBatchSize = None,
    old_num_workers: options.OldNumWorkers = None,
) -> None:
    # the implementation loads torch: imported here, so that --help and option errors stay fast
    from clipdebias.clip.backbone import BackboneConfig
    from clipdebias.commands.encode import EncodeConfig, run_encode
    from clipdebias.utils.distributed import is_main_process

    encode_precision = options.renamed(encode_precision, old_precision, "--precision", "--encode-precision")
    encode_batch_size = options.renamed(encode_batch_size, old_batch_size, "--batch-size", "--encode-batch-size")
    workers = options.renamed(workers, old_num_workers, "--num-workers", "--workers")
    config = EncodeConfig(
        dataset=dataset,
        data_root=data_root,
        split=split,
        backbone=BackboneConfig(
            model=options.or_default(model, defaults.MODEL),
            pretrained=options.or_default(pretrained, defaults.PRETRAINED),
            precision=options.or_default(encode_precision, defaults.ENCODE_PRECISION),
            device=device,
            quick_gelu=quick_gelu,
        ),
        cache_dir=cache_dir,
        encode_batch_size=options.or_default(encode_batch_size, defaults.ENCODE_BATCH_SIZE),
        workers=workers,
        threads=threads,
        chunk_size=options.or_default(chunk_size, defaults.CHUNK_SIZE),
        rebuild=rebuild,
        decode=decode,
    )
    with RichProgress() as progress:
        result, backbone = run_encode(config, progress)
    if not is_main_process():  # under torchrun, rank 0 shows the summary
        return
    console = Console()
    table = Table(title=f"clipdebias encode: {dataset} {split}", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for name, value in backbone.describe():
        table.add_row(name, escape(value))
    entry = result.entry
    table.add_row("images in split", f"{entry.num_images:,}")
    if result.was_complete:
        table.add_row("encoded now", "nothing to encode: the cache entry is complete")
    else:
        rate = f" ({result.encoded / result.elapsed_s:,.1f} img/s)" if result.encoded and result.elapsed_s > 0 else ""
        table.add_row("encoded now", f"{result.encoded:,} in {result.elapsed_s:.1f} s{rate}")
        table.add_row("decoded by", _DECODERS[result.decoder])
        table.add_row("reused from an earlier run", f"{result.reused:,}")
    table.add_row("unreadable (skipped)", f"{result.failed:,}" + (" (listed in manifest.csv)" if result.failed else ""))
    for index, path, reason in result.failed_examples:
        table.add_row("", escape(f"#{index} {path}: {reason}"))
    table.add_row("cache entry", escape(str(entry.path)))
    console.print(table)
