"""The names of the files in a run folder (``--out`` of ``ssl`` and ``zeroshot``), in one place.

Constants only, so that readers (``reporting``) and the CLI use them without loading torch; the
writer is :class:`clipdebias.training.run_folder.RunFolder`. The layout is specified in docs/formats.md.
"""

CONFIG = "config.json"
METRICS = "metrics.json"
METRICS_LINES = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PSEUDOLABELS = "pseudolabels.csv"  # zeroshot's pseudo-labels of the train split (and its .json sidecar)
LABELED_INDEX = "labeled_index.csv"
UNLABELED_INDEX = "unlabeled_index.csv"
INDEX_COLUMNS = ("index", "path", "label")
SKIPPED_IMAGES = "skipped_images.csv"
SKIPPED_COLUMNS = ("split", "index", "path", "reason")
