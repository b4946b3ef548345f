"""Command-line options shared by the commands that read a dataset and run a CLIP backbone.

Each is an ``Annotated`` type, so a command declares ``dataset: options.Dataset`` and a default;
the help text and flag names live here once.
"""

from __future__ import annotations

from typing import Annotated

import typer

Dataset = Annotated[
    str, typer.Option("--dataset", help="digits, cifar10, cifar100, imagenet or imagefolder (see docs/datasets.md].")
]
DataRoot = Annotated[str | None, typer.Option("--data-root", help="Folder of the dataset (not needed for digits].")]
Split = Annotated[str, typer.Option("--split", help="train or val.")]
Model = Annotated[
    str, typer.Option("--model", help="open_clip model name (ViT-B-32, RN50, ...) or a JSON model config file.")
]
Pretrained = Annotated[
    str,
    typer.Option(
        "--pretrained",
        help="open_clip weights tag (openai, laion2b_s34b_b79k, ...), a weights file, hf-hub:ORG/REPO, local-dir:DIR, or none (random weights, for tests].",
    ),
]
QuickGelu = Annotated[
    bool | None,
    typer.Option(
        "--quick-gelu/--no-quick-gelu",
        help="Force the activation; by default it follows the weights (QuickGELU for OpenAI weights].",
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Precision = Annotated[
    str, typer.Option("--precision", help="fp32, fp16 or bf16 (embeddings are always stored as float32].")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
NumWorkers = Annotated[
    int | None,
    typer.Option("--num-workers", min=0, help="Image decoding processes [default: 0 on CPU, up to 8 with a GPU]."),
]
CacheDir = Annotated[
    str | None,
    typer.Option("--cache-dir", help="Embedding cache folder [default: $CLIPDEBIAS_CACHE or ~/.cache/clipdebias]."),
]
ChunkSize = Annotated[
    int, typer.Option("--chunk-size", min=1, help="Images per cache shard: the most a killed run has to redo.")
]
Classnames = Annotated[
    str | None,
    typer.Option(
        "--classnames",
        help="File with one class name per line, in label order [default: shipped names, else folder names].",
    ),
]
Templates = Annotated[
    str | None,
    typer.Option(
        "--templates",
        help="Prompt templates: a file (one per line, with {}), openai (80) or simple [default: the dataset's shipped templates, else openai].",
    ),
]
LogitScale = Annotated[
    float | None,
    typer.Option(
        "--logit-scale", help="Multiplies the cosine similarities [default: the model's, 100 for OpenAI CLIP]."
    ),
]
