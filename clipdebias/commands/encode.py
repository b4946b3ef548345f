"""``clipdebias encode``: every image of a dataset split through CLIP, into the embedding cache.

The cache itself (resumable shards, the FAISS index, its readers) is :mod:`clipdebias.clip.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipdebias.clip.backbone import Backbone, BackboneConfig, load_backbone
from clipdebias.clip.cache import EncodeResult, cached_embeddings
from clipdebias.clip.jpeg_batches import check_decode
from clipdebias.config import defaults
from clipdebias.config.checks import check_choice, check_encoding
from clipdebias.data.sources import check_dataset, open_dataset
from clipdebias.utils import distributed
from clipdebias.utils.device import resolve_device
from clipdebias.utils.paths import prepare_cache_dir
from clipdebias.utils.progress import NoProgress, Progress
from clipdebias.utils.threads import torch_threads


@dataclass(frozen=True)
class EncodeConfig:
    """Resolved options of ``clipdebias encode``."""

    dataset: str
    data_root: str | None
    split: str
    backbone: BackboneConfig
    cache_dir: str | None = None
    encode_batch_size: int = defaults.ENCODE_BATCH_SIZE
    workers: int | None = None  # None: see clipdebias.utils.device.encode_workers
    threads: int | None = None  # None: torch's own default
    chunk_size: int = defaults.CHUNK_SIZE
    rebuild: bool = False
    decode: str = defaults.DECODE

    def __post_init__(self) -> None:
        """Bad values fail here, when the options are resolved, before any work."""
        check_encoding(self)
        check_choice("encode_precision", self.backbone.precision, defaults.PRECISIONS)
        check_decode(self.decode, self.backbone.device)


def run_encode(config: EncodeConfig, progress: Progress | None = None) -> tuple[EncodeResult, Backbone]:
    """Load the backbone, open the dataset and fill the cache; returns the result and the backbone.

    Under torchrun every process loads the backbone on its own GPU and encodes its share of the
    chunks (see :func:`encode_split`).
    """
    with torch_threads(config.threads), distributed.session(resolve_device(config.backbone.device)):
        return _run_encode(config, progress)


def _run_encode(config: EncodeConfig, progress: Progress | None) -> tuple[EncodeResult, Backbone]:
    progress = (progress or NoProgress()) if distributed.is_main_process() else NoProgress()
    check_dataset(config.dataset, config.split, config.data_root)
    root = prepare_cache_dir(config.cache_dir)
    backbone = load_backbone(config.backbone, digest_dir=root)  # first: missing weights fail before a long folder scan
    source = open_dataset(config.dataset, config.split, config.data_root)
    backbone.warn_if_random(progress, "its embeddings and labels are")
    result = cached_embeddings(
        source,
        backbone,
        root,
        config.data_root,
        batch_size=config.encode_batch_size,
        num_workers=config.workers,
        chunk_size=config.chunk_size,
        rebuild=config.rebuild,
        progress=progress,
        decode=config.decode,
    )
    return result, backbone
