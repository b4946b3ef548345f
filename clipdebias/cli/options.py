"""Command-line options shared by the commands, and the old spellings of renamed ones.

Each option is an ``Annotated`` type, so a command declares ``dataset: options.Dataset`` and a
default; the flag names and help texts live here once. Every default a help text states is read
from :mod:`clipdebias.config.defaults`: Typer shows a concrete default itself (``[default: 64]``);
an option whose default is ``None`` (resolved later, or described in words) states it with
:func:`default`, in the same form.

One name per concept (docs/usage.md, "Glossary"): ``--workers`` (decoding / loader processes),
``--threads`` (torch's CPU threads), ``--batch-size`` (the training batch), ``--encode-batch-size``
(CLIP's encoding batch), ``--precision`` (training autocast), ``--encode-precision`` (CLIP's
weights while encoding), ``--select-threshold`` (CLIP's selection) and ``--threshold`` (the
student's pseudo-labels). The old spellings stay for one release, hidden from ``--help``:
:func:`renamed` takes their value and prints one warning line.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, TypeVar

from typer import Option

from clipdebias.config import defaults
from clipdebias.utils.errors import OptionError, UserError

T = TypeVar("T")


def default(text: object) -> str:
    """A help text's statement of a default that Typer cannot show (the option's value is ``None``)."""
    return f"  [default: {text}]"


def speaks_for_the_node() -> bool:
    """False in the processes ``torchrun`` starts beside the first one of a node: a message is the
    same in every process, and one line per node reads better than eight interleaved ones."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def say(line: str) -> None:
    """One line on stderr (a warning or a note), once per node."""
    if speaks_for_the_node():
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def renamed(new: T | None, old: T | None, old_flag: str, new_flag: str) -> T | None:
    """The value of an option that has an old spelling: ``new`` when given, else ``old`` (saying once
    that the old name is deprecated); ``None`` when neither was given."""
    if old is None:
        return new
    if new is not None:
        raise UserError(f"{old_flag} is the old name of {new_flag}; give {new_flag} only")
    say(f"warning: {old_flag} is deprecated; use {new_flag} (the old name goes in the next release)")
    return old


def or_default(value: T | None, fallback: T) -> T:
    """``value``, or ``fallback`` (a :mod:`clipdebias.config.defaults` value) where none was given."""
    return fallback if value is None else value


def refuse_given(flag: str, why: str, **given: Any) -> None:
    """Refuse the first of ``given`` (config field name -> the value the user gave, ``None`` when not
    given) that does not apply together with ``flag``: ``--model does not apply with --logits (...)``."""
    for field, value in given.items():
        if value is not None:
            raise OptionError(field, f"does not apply with {flag} ({why}); leave it out")


def _hidden(flag: str, **kwargs: Any) -> Any:
    return Option(flag, hidden=True, show_default=False, **kwargs)


# --- data ---------------------------------------------------------------------------------------------

Dataset = Annotated[
    str,
    Option(
        "--dataset",
        help="digits, cifar10, cifar100, imagenet or imagefolder (see docs/datasets.md).",
        show_default=False,
    ),
]
DataRoot = Annotated[str | None, Option("--data-root", help="Folder of the dataset (not needed for digits).")]
Split = Annotated[str, Option("--split", help="train or val.")]
Device = Annotated[str, Option("--device", help="auto, cpu or cuda.")]
Seed = Annotated[int, Option("--seed", help="Seed of the initialisation, the batches and the views.")]

# --- the CLIP backbone and the embedding cache ------------------------------------------------------

Model = Annotated[
    str | None,
    Option(
        "--model",
        help="open_clip model name (ViT-B-32, RN50, ...) or a JSON model config file." + default(defaults.MODEL),
    ),
]
Pretrained = Annotated[
    str | None,
    Option(
        "--pretrained",
        help="open_clip weights tag (openai, laion2b_s34b_b79k, ...), a weights file, hf-hub:ORG/REPO, "
        "local-dir:DIR, or none (random weights, for tests)." + default(defaults.PRETRAINED),
    ),
]
QuickGelu = Annotated[
    bool | None,
    Option(
        "--quick-gelu/--no-quick-gelu",
        help="Force the activation; by default it follows the weights (QuickGELU for OpenAI weights).",
    ),
]
EncodePrecision = Annotated[
    str | None,
    Option(
        "--encode-precision",
        help=f"CLIP's weights while encoding: {', '.join(defaults.PRECISIONS)} (embeddings are stored as float32)."
        + default(defaults.ENCODE_PRECISION),
    ),
]
EncodeBatchSize = Annotated[
    int | None,
    Option(
        "--encode-batch-size",
        min=1,
        help="Images per CLIP forward pass while encoding." + default(defaults.ENCODE_BATCH_SIZE),
    ),
]
Workers = Annotated[
    int | None,
    Option("--workers", min=0, help="Image decoding processes." + default(defaults.ENCODE_WORKERS_TEXT)),
]
Threads = Annotated[
    int | None,
    Option(
        "--threads",
        min=1,
        help="CPU threads of torch (1 is often fastest on a busy CPU)." + default(defaults.THREADS_TEXT),
    ),
]
Decode = Annotated[
    str,
    Option(
        "--decode",
        help="Who decodes the images for CLIP: gpu (JPEGs in batches on the model's CUDA device, other files "
        "on CPUs), cpu (Pillow in the decoding processes) or auto (gpu when the model runs on CUDA).",
    ),
]
CacheDir = Annotated[
    str | None, Option("--cache-dir", help="Embedding cache folder." + default(defaults.CACHE_DIR_TEXT))
]
ChunkSize = Annotated[
    int | None,
    Option(
        "--chunk-size",
        min=1,
        help="Images per cache shard: the most a killed run has to redo." + default(defaults.CHUNK_SIZE),
    ),
]

# --- prompts ------------------------------------------------------------------------------------------

Classnames = Annotated[
    str | None,
    Option(
        "--classnames",
        help="File with one class name per line, in label order." + default("shipped names, else folder names"),
    ),
]
Templates = Annotated[
    str | None,
    Option(
        "--templates",
        help="Prompt templates: a file (one per line, with {}), openai (80) or simple."
        + default("the dataset's shipped templates, else openai"),
    ),
]
LogitScale = Annotated[
    float | None,
    Option(
        "--logit-scale",
        help="Multiplies the cosine similarities." + default("the model's, 100 for OpenAI CLIP"),
    ),
]

# kNN refinement of the teacher's probabilities (pseudolabel, zeroshot; docs/algorithm.md)
Knn = Annotated[
    int,
    Option(
        "--knn",
        help="Refine each image's probabilities with those of its K nearest neighbours (cosine of the "
        "image embeddings) before the correction; 0 = off.",
    ),
]
KnnAlpha = Annotated[
    float | None,
    Option(
        "--knn-alpha",
        help="--knn: weight of the neighbours' mean, in [0, 1] (0 = the plain teacher)." + default(defaults.KNN_ALPHA),
    ),
]
KnnSteps = Annotated[
    int | None,
    Option(
        "--knn-steps",
        help="--knn: steps of label propagation anchored to the teacher (1 = one smoothing)."
        + default(defaults.KNN_STEPS),
    ),
]


def refuse_knn_settings_without_knn(knn: int | None, knn_alpha: float | None, knn_steps: int | None) -> None:
    """``--knn-alpha`` / ``--knn-steps`` given while ``--knn`` is 0 (or left at its default, 0) is a mistake."""
    if not knn:
        why = "no neighbours refine the teacher; give --knn K"
        refuse_given("--knn 0", why, knn_alpha=knn_alpha, knn_steps=knn_steps)


# --- training -----------------------------------------------------------------------------------------

EvalBatchSize = Annotated[int, Option("--eval-batch-size", min=1, help="Images per forward pass while evaluating.")]
Resume = Annotated[bool, Option("--resume", help="Continue the run in --out from its last checkpoint.")]
RunReport = Annotated[bool, Option("--report/--no-report", help="Write OUT/report/ (charts, report.md) at the end.")]

# --- old spellings, hidden; each goes in the next release -------------------------------------------------

OldNumWorkers = Annotated[int | None, _hidden("--num-workers", min=0)]  # --workers
OldBatchSize = Annotated[int | None, _hidden("--batch-size", min=1)]  # encode, pseudolabel: --encode-batch-size
OldPrecision = Annotated[str | None, _hidden("--precision")]  # encode, pseudolabel: --encode-precision
OldThreshold = Annotated[float | None, _hidden("--threshold", min=0.0, max=1.0)]  # pseudolabel: --select-threshold
OldAmp = Annotated[bool | None, _hidden("--amp/--no-amp")]  # zeroshot: --precision bf16 / fp32
