"""Every default value of every option, in one module light enough for the CLI to import at start-up.

Each value is documented once here; the library, the CLI's ``--help`` and docs/usage.md all read it
from here (tests/test_docs_defaults.py checks the doc's tables against this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- the CLIP backbone and its embedding cache (encode, pseudolabel, zeroshot) ----------------------

MODEL = "ViT-B-32"
PRETRAINED = "openai"
DEVICE = "auto"
# The split that encode and pseudolabel read.
SPLIT = "train"
# Numeric precisions of the CLIP backbone's weights while encoding (--encode-precision); the
# embeddings are stored as float32 either way. ssl's --precision (training autocast) takes the same.
PRECISIONS = ("fp32", "fp16", "bf16")
ENCODE_PRECISION = "fp32"
# Images per CLIP forward pass while encoding (--encode-batch-size).
ENCODE_BATCH_SIZE = 64
# Images per cache shard: the most work a killed `encode` has to redo.
CHUNK_SIZE = 4096
# Image decoding processes while encoding (--workers): None = 0 on CPU, up to 8 with a GPU
# (clipdebias.utils.device.encode_workers).
ENCODE_WORKERS_TEXT = "0 on CPU, up to 8 with a GPU"
# Which decoder feeds CLIP while encoding (--decode): gpu = torchvision's batched JPEG decoder on the model's
# CUDA device (other files on the CPU), cpu = Pillow in the decoding processes, auto = gpu when the model
# encodes on CUDA, else cpu (clipdebias.clip.jpeg_batches).
DECODES = ("auto", "cpu", "gpu")
DECODE = "auto"
# Pillow decodes a large JPEG at 1/2, 1/4 or 1/8 of its size when at least this many times the model's input
# size remains on its shortest side (docs/performance.md, "Reduced-size JPEG decoding").
DECODE_DRAFT_SCALE = 2
# torch's CPU threads (--threads): None = torch's own default.
THREADS_TEXT = "torch's"
CACHE_DIR_TEXT = "$CLIPDEBIAS_CACHE or ~/.cache/clipdebias"

# --- pseudo-labels (pseudolabel, and CLIP's labels in zeroshot) ---------------------------------------

# Debiasing strength tau (the DebiasPL paper's scripts use 0.4); 0 = plain zero-shot.
TAU = 0.4
# Debiased CLIP confidence at or above which a zero-shot pseudo-label is "selected" (--select-threshold):
# the CVPR 2022 zero-shot recipe takes these images as the labeled set.
SELECT_THRESHOLD = 0.95
# Rows of logits in memory at once in `pseudolabel` (16384 x 1000 classes x 4 B = 64 MB per copy).
CHUNK_ROWS = 16384
# How the zero-shot logits are corrected (--debias): paper = the DebiasPL paper's z - tau log q; balance =
# per-class offsets b with mean_i softmax(z_i - b) = the target prior (uniform, or --target-prior);
# none = the plain zero-shot labels.
DEBIAS_MODES = ("paper", "balance", "none")
DEBIAS = "paper"
# The method name a training run (ssl, zeroshot) records for each --debias mode, in metrics.json,
# config.json, reports and compare; --debias paper with --tau 0 trains (and is named) as none.
METHOD_OF_DEBIAS = {"paper": "debiaspl", "balance": "balanced", "none": "fixmatch"}
# balance: stop when every class's corrected share is within this relative distance of its target share,
# or after this many passes over the logits (each pass is one softmax over [N, C]).
BALANCE_TOLERANCE = 1e-4
BALANCE_MAX_ITERATIONS = 100
# kNN refinement of the teacher's probabilities (clipdebias.pseudolabels.knn, docs/algorithm.md):
# p'_i = (1 - alpha) p_i + alpha * mean of p_j over the K nearest other images (cosine of the CLIP
# embeddings). KNN = K; 0 = off (the plain teacher: no neighbour search, no [N, C] buffer). KNN_ALPHA =
# alpha in [0, 1] and KNN_STEPS = T passes of label propagation anchored to the teacher (1 = the formula
# above; each further step costs one pass and a second float16 [N, C] buffer): alpha 0.9, T 3 gave the
# most accurate kNN + balance labels on the tuning seeds of both digits teachers, train rows only
# (benchmarks/pseudolabel_quality.py, docs/results.md; K 10 there, within 0.7 points of K 5 and 20).
KNN = 0
KNN_ALPHA = 0.9
KNN_STEPS = 3
# Classes per image in CLIPRankedPredictions.csv of --reference-format (at most the number of classes).
REFERENCE_TOP_K = 5

# --- training (ssl, zeroshot) ---------------------------------------------------------------------

SEED = 0
# Images per forward pass while evaluating (--eval-batch-size).
EVAL_BATCH_SIZE = 256
# ssl's --precision: fp32, or autocast of the forward passes to bf16 / fp16 (with a gradient scaler).
TRAIN_PRECISION = "fp32"
# zeroshot's --precision: the clip / resnet50 students run under bf16 autocast or in fp32; auto = bf16
# on CUDA, fp32 elsewhere. fp16 is not offered: the zeroshot students have no gradient scaler.
ZEROSHOT_PRECISIONS = ("auto", "fp32", "bf16")
ZEROSHOT_PRECISION = "auto"
# Batches each DataLoader worker loads ahead while training (torch's default is 2).
PREFETCH_FACTOR = 4
# Fraction of train held out for evaluation (--holdout); 0 = evaluate on val.
HOLDOUT = 0.0
# CLIP confidence from which CLIP's label replaces an unsure student pseudo-label (--clip-fallback).
CLIP_FALLBACK = 0.3
# How the EMA teacher gets its BatchNorm running statistics (--teacher-bn): ema = averaged like the weights
# (the DebiasPL / FixMatch reference code), copy = the student's, copied after every step.
TEACHER_BN_MODES = ("ema", "copy")
# ssl's DataLoader processes (--workers): None = 0 for digits, else the CPU cores - 1, at most 8.
TRAIN_WORKERS_TEXT = "0 for digits, else CPUs - 1, at most 8"


@dataclass(frozen=True)
class SSLDefaults:
    """The values an ``ssl`` option takes when the user does not give it, for one dataset."""

    labels: str
    tau: float
    threshold: float
    prior_momentum: float
    lambda_u: float
    mu: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None  # None: one pass over the unlabeled rows, ceil(N_u / (mu * B))
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_momentum: float
    arch: str
    image_size: int
    multiviews: bool
    clip_fallback: float = CLIP_FALLBACK
    eval_batch_size: int = EVAL_BATCH_SIZE
    # The reference code's teacher unless measured otherwise: digits warms the momentum up (docs/results.md,
    # "EMA teacher: warm-up and BatchNorm statistics").
    teacher_bn: str = "ema"
    ema_warmup: bool = False
    # How the pseudo-labels are corrected (--debias, DEBIAS_MODES): paper = DebiasPL with tau, balance =
    # online balanced offsets to a uniform prior, none = FixMatch (docs/algorithm.md). digits: balance, chosen
    # on held-out train (docs/results.md, "Semi-supervised digits — summary and reading").
    debias: str = DEBIAS


# FixMatch (Sohn et al. 2020) for CIFAR; DebiasPL's ImageNet scripts (Wang et al. 2022: threshold
# 0.7, lambda_u 10, mu 5, lr 0.003 from a pre-trained ResNet-50, 50 epochs, multi-views); the digits
# prototype (docs/usage.md). DebiasPL: tau 0.4 and prior momentum 0.999 from the reference code.
SSL_DEFAULTS: dict[str, SSLDefaults] = {
    "digits": SSLDefaults(
        labels="2-per-class", tau=TAU, threshold=0.95, prior_momentum=0.99, lambda_u=1.0, mu=4, batch_size=16,
        epochs=10, steps_per_epoch=250, lr=0.03, weight_decay=5e-4, warmup_epochs=0, ema_momentum=0.99, arch="cnn",
        image_size=16, multiviews=False, ema_warmup=True, debias="balance",
    ),
    "cifar10": SSLDefaults(
        labels="4-per-class", tau=TAU, threshold=0.95, prior_momentum=0.999, lambda_u=1.0, mu=7, batch_size=64,
        epochs=1024, steps_per_epoch=1024, lr=0.03, weight_decay=5e-4, warmup_epochs=0, ema_momentum=0.999,
        arch="resnet18", image_size=32, multiviews=False,
    ),
    "cifar100": SSLDefaults(
        labels="4-per-class", tau=TAU, threshold=0.95, prior_momentum=0.999, lambda_u=1.0, mu=7, batch_size=64,
        epochs=1024, steps_per_epoch=1024, lr=0.03, weight_decay=1e-3, warmup_epochs=0, ema_momentum=0.999,
        arch="resnet18", image_size=32, multiviews=False,
    ),
    "imagenet": SSLDefaults(
        labels="0.2pct", tau=TAU, threshold=0.7, prior_momentum=0.999, lambda_u=10.0, mu=5, batch_size=64,
        epochs=50, steps_per_epoch=None, lr=0.003, weight_decay=1e-4, warmup_epochs=5, ema_momentum=0.999,
        arch="resnet50", image_size=224, multiviews=True,
    ),
    "imagefolder": SSLDefaults(
        labels="1pct", tau=TAU, threshold=0.95, prior_momentum=0.999, lambda_u=1.0, mu=7, batch_size=64,
        epochs=50, steps_per_epoch=None, lr=0.03, weight_decay=5e-4, warmup_epochs=0, ema_momentum=0.999,
        arch="resnet18", image_size=224, multiviews=False,
    ),
}  # fmt: skip

# The ssl options whose default does not depend on the dataset (``workers``: see TRAIN_WORKERS_TEXT).
SSL_OPTIONS: dict[str, Any] = {
    "data_root": None, "labeled_index": None, "holdout": HOLDOUT, "init_weights": None, "clip_pseudolabels": None,
    "seed": SEED, "device": DEVICE, "workers": None, "threads": None, "resume": False, "precision": TRAIN_PRECISION,
    "compile": False, "sync_bn": False, "prefetch_factor": PREFETCH_FACTOR,
}  # fmt: skip


@dataclass(frozen=True)
class SharedDefaults:
    """Defaults of the ``zeroshot`` options every student shares: the CVPR 2022 zero-shot recipe
    (``scripts/zsl/train_DebiasPL_ImageNet.sh``: tau 0.4, threshold 0.8, prior momentum 0.99; the
    confident set at CLIP confidence 0.95; CLIP's label where its confidence is >= 0.3)."""

    tau: float = TAU
    select_threshold: float = SELECT_THRESHOLD
    clip_fallback: float = CLIP_FALLBACK
    threshold: float = 0.8
    prior_momentum: float = 0.99
    head: str = "linear"
    views: int = 2
    feature_dropout: float = 0.1
    feature_noise: float = 0.5
    min_steps_per_epoch: int = 50


@dataclass(frozen=True)
class StudentDefaults:
    """Per-student ``zeroshot`` defaults (docs/usage.md explains where each comes from)."""

    epochs: int
    batch_size: int
    mu: int
    lambda_u: float
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_momentum: float
    multiviews: bool
    image_size: int | None  # None: not an option (head) or CLIP's own input size (clip)


STUDENT = "head"
SHARED_DEFAULTS = SharedDefaults()
STUDENT_DEFAULTS: dict[str, StudentDefaults] = {
    # Chosen on the digits proxy's holdout (benchmarks/zeroshot_head_digits.py, docs/results.md).
    "head": StudentDefaults(
        epochs=10, batch_size=256, mu=4, lambda_u=1.0, lr=0.15, weight_decay=0.0, warmup_epochs=0,
        ema_momentum=0.99, multiviews=False, image_size=None,
    ),
    # Common practice for fine-tuning CLIP (AdamW, small lr, wd 0.1); not tuned here (no GPU, no weights).
    "clip": StudentDefaults(
        epochs=10, batch_size=64, mu=2, lambda_u=1.0, lr=1e-5, weight_decay=0.1, warmup_epochs=1,
        ema_momentum=0.999, multiviews=False, image_size=None,
    ),
    # The reference zero-shot script: lr 0.003, cosine, 5 warm-up epochs, 50 epochs, batch 64,
    # mu 5, lambda_u 10, wd 1e-4, EMA 0.999, multi-views, 224 px.
    "resnet50": StudentDefaults(
        epochs=50, batch_size=64, mu=5, lambda_u=10.0, lr=0.003, weight_decay=1e-4, warmup_epochs=5,
        ema_momentum=0.999, multiviews=True, image_size=224,
    ),
}  # fmt: skip

# The zeroshot options whose default depends on neither the student nor the dataset.
ZEROSHOT_OPTIONS: dict[str, Any] = {
    "data_root": None, "model": MODEL, "pretrained": PRETRAINED, "quick_gelu": None,
    "encode_precision": ENCODE_PRECISION, "classnames": None, "templates": None, "logit_scale": None,
    "select_topk_per_class": None, "steps_per_epoch": None, "init_weights": None, "precision": ZEROSHOT_PRECISION,
    "seed": SEED, "device": DEVICE, "decode": DECODE, "workers": None, "threads": None,
    "encode_batch_size": ENCODE_BATCH_SIZE,
    "eval_batch_size": EVAL_BATCH_SIZE, "cache_dir": None, "report": True, "resume": False,
    "debias": DEBIAS, "knn": KNN, "knn_alpha": KNN_ALPHA, "knn_steps": KNN_STEPS,
}  # fmt: skip


# --- reports and comparisons ------------------------------------------------------------------------

# Where `compare` writes compare.md and compare.png.
COMPARE_OUT = "compare"
# What `compare` groups runs by (--by): besides the method and its main options, what was trained
# (ssl or zeroshot, the zeroshot student, the ssl network) and whether CLIP's labels were a fallback
# (ssl --clip-pseudolabels), so that "DebiasPL w/ CLIP" is never pooled with DebiasPL.
COMPARE_GROUP_KEYS = (
    "method",
    "command",
    "student",
    "arch",
    "dataset",
    "labels",
    "tau",
    "threshold",
    "clip_pseudolabels",
)
