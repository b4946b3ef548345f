"""Time and peak memory of `pseudolabel`'s streaming core at ImageNet scale, against a naive version.

Synthetic data of ImageNet's size: 1,281,167 L2-normalised 512-d embeddings written as a real
cache entry (FAISS index + manifest), and a 1000-class text classifier. Each variant runs in its
own process, which reports its peak resident memory (VmHWM, including the memory-mapped index
pages it touched):

- streaming: clipdebias's path (EmbeddingStore memory map -> ZeroShotLogits -> two chunked passes
  -> pandas table -> CSV), never holding [N, C];
- balance: the same streaming path with ``--debias balance`` (one pass over the computed logits,
  keeping a float16 copy, then the fixed-point passes over that copy), on logits with a per-class
  offset ``linspace(0, --class-bias, C)`` added so the teacher leans to some classes as CLIP does
  (random embeddings alone give nearly balanced logits, which would converge at once);
- naive: embeddings in RAM, the full [N, C] logits, softmax, prior, debiased softmax. It needs
  about N * (D + 3 C) * 4 bytes; when that does not fit comfortably in the free memory of this
  machine it runs on the first --naive-rows rows instead and the report extrapolates linearly.

    python benchmarks/pseudolabel_scale.py [--rows 1281167] [--classes 1000] [--dim 512]

Prints one JSON object (also written to --workdir/result.json). Takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGENET_TRAIN_IMAGES = 1_281_167
LOGIT_SCALE = 100.0
TAU = 0.4
THRESHOLD = 0.95


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_gib() -> float:
    """The largest resident set of this process so far (VmHWM)."""
    return _status_gib("VmHWM")


def current_rss_gib() -> float:
    return _status_gib("VmRSS")


def available_gib() -> float:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def make_entry(workdir: Path, rows: int, classes: int, dim: int, seed: int = 0) -> None:
    """A finished cache entry with random unit vectors, and a random unit classifier."""
    import faiss
    import numpy as np
    import pandas as pd

    from clipdebias.utils.atomic import atomic_write_json

    rng = np.random.default_rng(seed)
    entry = workdir / "entry"
    entry.mkdir(parents=True, exist_ok=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for start in range(0, rows, 262_144):
        block = rng.standard_normal((min(262_144, rows - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
    faiss.write_index(index, str(entry / "index.faiss"))
    del index
    labels = np.arange(rows) % classes
    pd.DataFrame(
        {"index": np.arange(rows), "path": [f"imagenet:train/{i}" for i in range(rows)], "label": labels, "error": ""}
    ).to_csv(entry / "manifest.csv", index=False)
    atomic_write_json(
        entry / "meta.json", {"complete": True, "num_images": rows, "num_encoded": rows, "num_failed": 0, "dim": dim}
    )
    classifier = rng.standard_normal((classes, dim), dtype=np.float32)
    np.save(workdir / "classifier.npy", classifier / np.linalg.norm(classifier, axis=1, keepdims=True))


def run_streaming(workdir: Path, chunk_rows: int) -> dict:
    import numpy as np
    import torch

    from clipdebias.clip.cache import EmbeddingStore, open_entry
    from clipdebias.pseudolabels.files import pseudo_label_table, write_pseudo_labels
    from clipdebias.pseudolabels.labels import debiased_pseudo_labels
    from clipdebias.pseudolabels.rows import ZeroShotLogits

    began = time.perf_counter()
    store = EmbeddingStore(open_entry(workdir / "entry"))
    classifier = torch.from_numpy(np.load(workdir / "classifier.npy"))
    logits = ZeroShotLogits(store.vectors, classifier, LOGIT_SCALE)
    result = debiased_pseudo_labels(logits, TAU, THRESHOLD, chunk_rows)
    labelled = time.perf_counter()
    rows = len(store)
    table = pseudo_label_table(
        result,
        store.ids,
        [f"imagenet:train/{i}" for i in range(rows)],
        store.labels,
        [f"class {c}" for c in range(classifier.shape[0])],
    )
    write_pseudo_labels(table, workdir / "pseudolabels.csv", {"tau": TAU})
    done = time.perf_counter()
    np.save(workdir / "streaming_labels.npy", result.label[:NAIVE_CHECK_ROWS])
    return {"labels_s": labelled - began, "total_s": done - began, "peak_rss_gib": peak_rss_gib(), "rows": rows}


NAIVE_CHECK_ROWS = 100_000  # rows whose labels must agree between the two variants


class _Biased:
    """Logit rows with a per-class offset added: a teacher that leans to the later classes."""

    ndim = 2

    def __init__(self, rows, bias):
        self.rows, self.bias, self.shape = rows, bias, rows.shape

    def __getitem__(self, part):
        return self.rows[part] + self.bias


def run_balance(workdir: Path, chunk_rows: int, class_bias: float) -> dict:
    import numpy as np
    import torch

    from clipdebias.clip.cache import EmbeddingStore, open_entry
    from clipdebias.pseudolabels.labels import debiased_pseudo_labels
    from clipdebias.pseudolabels.rows import ZeroShotLogits

    began = time.perf_counter()
    store = EmbeddingStore(open_entry(workdir / "entry"))
    classifier = torch.from_numpy(np.load(workdir / "classifier.npy"))
    bias = torch.linspace(0.0, class_bias, classifier.shape[0])
    logits = _Biased(ZeroShotLogits(store.vectors, classifier, LOGIT_SCALE), bias)
    result = debiased_pseudo_labels(logits, TAU, THRESHOLD, chunk_rows, mode="balance")
    labelled = time.perf_counter()
    counts = np.bincount(result.label, minlength=classifier.shape[0])
    raw = np.bincount(result.raw_label, minlength=classifier.shape[0])
    return {
        "labels_s": labelled - began,
        "peak_rss_gib": peak_rss_gib(),
        "passes": result.balance.iterations,
        "converged": result.balance.converged,
        "class_bias": class_bias,
        "raw_imbalance": float(raw.max() / max(raw.min(), 1)),
        "balanced_imbalance": float(counts.max() / max(counts.min(), 1)),
    }


def run_naive(workdir: Path, rows: int) -> dict:
    """Everything at once: [N, C] logits and probabilities in memory."""
    import faiss
    import numpy as np
    import torch

    began = time.perf_counter()
    index = faiss.read_index(str(workdir / "entry" / "index.faiss"))  # all vectors in RAM, read once
    flat = faiss.downcast_index(index.index)
    vectors = np.asarray(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)).reshape(flat.ntotal, flat.d)
    full = rows >= len(vectors)
    embeddings = torch.from_numpy(vectors[:rows])
    classifier = torch.from_numpy(np.load(workdir / "classifier.npy"))
    loaded, loaded_rss = time.perf_counter(), current_rss_gib()
    logits = LOGIT_SCALE * embeddings @ classifier.T
    prior = torch.softmax(logits, dim=-1).mean(dim=0)
    debiased = torch.softmax(logits - TAU * torch.log(prior), dim=-1)
    confidence, labels = debiased.max(dim=-1)
    raw_confidence, raw_labels = torch.softmax(logits, dim=-1).max(dim=-1)
    selected = confidence >= THRESHOLD
    done = time.perf_counter()
    agree = None
    if full:  # a subset has another prior, so only a full-size run can be compared
        streamed = np.load(workdir / "streaming_labels.npy")
        agree = bool(np.array_equal(streamed, labels[: len(streamed)].numpy()))
    return {
        "load_s": loaded - began,
        "compute_s": done - loaded,
        "labels_s": done - began,
        "rss_after_load_gib": loaded_rss,
        "peak_rss_gib": peak_rss_gib(),
        "rows": rows,
        "selected": int(selected.sum()),
        "labels_agree_with_streaming": agree,
    }


def child(kind: str, workdir: Path, argument: int, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--workdir", str(workdir), "--child-arg", str(argument), *extra],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=IMAGENET_TRAIN_IMAGES)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: clipdebias's DEFAULT_CHUNK_ROWS")
    parser.add_argument(
        "--naive-rows", type=int, default=256_000, help="rows for the naive variant when the full size does not fit"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--reuse", action="store_true", help="keep a synthetic entry of the same size already in --workdir"
    )
    parser.add_argument("--class-bias", type=float, default=3.0, help="balance variant: largest per-class offset")
    parser.add_argument("--child", choices=["make", "streaming", "balance", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--child-arg", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "make":
            make_entry(args.workdir, args.rows, args.classes, args.dim)
            print(json.dumps({}))
        elif args.child == "streaming":
            print(json.dumps(run_streaming(args.workdir, args.child_arg)))
        elif args.child == "balance":
            print(json.dumps(run_balance(args.workdir, args.child_arg, args.class_bias)))
        else:
            print(json.dumps(run_naive(args.workdir, args.child_arg)))
        return

    from clipdebias.pseudolabels.labels import DEFAULT_CHUNK_ROWS

    chunk_rows = args.chunk_rows or DEFAULT_CHUNK_ROWS
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clipdebias-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    meta = workdir / "entry" / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("num_images") == args.rows and args.reuse):
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "make",
                "--workdir",
                str(workdir),
                "--rows",
                str(args.rows),
                "--classes",
                str(args.classes),
                "--dim",
                str(args.dim),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    made = time.perf_counter() - began
    streaming = child("streaming", workdir, chunk_rows)
    balance = child("balance", workdir, chunk_rows, "--class-bias", str(args.class_bias))
    naive_need_gib = args.rows * (args.dim + 3 * args.classes) * 4 / 2**30
    fits = available_gib() > 1.5 * naive_need_gib
    naive_rows = args.rows if fits else min(args.naive_rows, args.rows)
    naive = child("naive", workdir, naive_rows)
    scale = args.rows / naive_rows
    result = {
        "rows": args.rows,
        "classes": args.classes,
        "dim": args.dim,
        "chunk_rows": chunk_rows,
        "cpu_count": os.cpu_count(),
        "synthetic_entry_s": round(made, 1),
        "streaming": streaming,
        "balance": balance,
        "balance_over_paper_time": round(balance["labels_s"] / streaming["labels_s"], 2),
        "naive": naive,
        "naive_full_size_estimate": None
        if fits
        else {
            # what grows with the rows (logits, probabilities) scales; loading all embeddings does not
            "labels_s": naive["load_s"] + scale * naive["compute_s"],
            "peak_rss_gib": naive["rss_after_load_gib"] + scale * (naive["peak_rss_gib"] - naive["rss_after_load_gib"]),
            "method": f"measured on {naive_rows} rows; the part that grows with the rows scaled by {scale:.2f}",
        },
        "naive_estimated_need_gib": round(naive_need_gib, 2),
        "available_gib_at_start": round(available_gib(), 1),
        "workdir": str(workdir),
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
