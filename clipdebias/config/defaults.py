"""Default values of options, in a module light enough for the CLI to import at start-up.

Each value is documented once here; the library modules and the CLI both read it from here.
"""

# Debiasing strength tau of `pseudolabel` (the DebiasPL paper's scripts use 0.4); 0 = plain zero-shot.
TAU = 0.4
# Confidence at or above which a zero-shot pseudo-label is "selected": the CVPR 2022 zero-shot recipe
# takes these images as the labeled set.
THRESHOLD = 0.95
# Images per embedding-cache shard: the most work a killed `encode` has to redo.
CHUNK_SIZE = 4096
# Rows of logits in memory at once in `pseudolabel` (16384 x 1000 classes x 4 B = 64 MB per copy).
CHUNK_ROWS = 16384
# Numeric precisions of --precision: fp32, or bf16 / fp16 (autocast while training; the CLIP
# backbone's weights when encoding).
PRECISIONS = ("fp32", "fp16", "bf16")
# Batches each DataLoader worker loads ahead while training (torch's default is 2).
PREFETCH_FACTOR = 4
