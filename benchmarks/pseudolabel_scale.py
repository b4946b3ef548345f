"""Time and peak memory of `pseudolabel`'s streaming core at ImageNet scale, against a naive version.

Synthetic data of ImageNet's size: 1,281,167 L2-normalised 512-d embeddings written as a real
cache entry (FAISS index + manifest), and a 1000-class text classifier. Each variant runs in its
own process, which reports its peak resident memory (VmHWM, including the memory-mapped index
pages it touched):

- limit: the compute limit of the paper mode, bare torch over the same memory map: two passes of
  ``[chunk, D] x [D, C]`` products in float32, pass 1 ``softmax`` and its column sums (the prior),
  pass 2 ``softmax(z - tau log q)`` and its row maxima (the labels), every chunk written into two
  buffers allocated once. No table, no CSV;
- streaming: clipdebias's path (EmbeddingStore memory map -> ZeroShotLogits -> two chunked passes
  -> pandas table -> CSV), never holding [N, C]. ``labels_s`` is the same work as the limit plus the
  plain labels (a row maximum in pass 1) and the per-row arrays; ``total_s`` adds the table and the CSV;
- balance: the same streaming path with ``--debias balance`` (offsets fitted on a strided subsample
  held in memory, then passes over all the rows, the first of which also takes the plain labels),
  on logits with a per-class offset ``linspace(0, --class-bias, C)`` added so the teacher leans to
  some classes as CLIP does (random embeddings alone give nearly balanced logits, which would
  converge at once);
- naive: embeddings in RAM, the full [N, C] logits, softmax, prior, debiased softmax. It needs
  about N * (D + 3 C) * 4 bytes; when that does not fit comfortably in the free memory of this
  machine it runs on the first --naive-rows rows instead and the report extrapolates linearly.

    python benchmarks/pseudolabel_scale.py [--rows 1281167] [--classes 1000] [--dim 512]
        [--threads T] [--repeats R] [--variants limit,streaming,balance,naive]

``--repeats`` runs limit, streaming and balance R times in turn (a fresh process each) and keeps
each one's fastest run: on a shared machine, load from other jobs only ever adds time. The ratios
(``paper_over_limit``, ``paper_total_over_limit``, ``balance_over_paper_time``) compare those; the
``_cpu`` ratios compare the CPU time of the same runs (``labels_cpu_s``: user + system, all threads),
which other jobs' load changes far less than the wall-clock time (use ``--threads 1`` for them: idle
OpenMP threads may spin and count).
Prints one JSON object (also written to --workdir/result.json), with the load average before and
after. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads): the work done, which load from
    other jobs on a shared machine changes far less than the wall-clock time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def run_limit(workdir: Path, chunk_rows: int) -> dict:
    """Bare torch: the two passes' matrix products and softmaxes, nothing else (see the docstring)."""
    import warnings

    import numpy as np
    import torch

    from clipdebias.clip.cache import EmbeddingStore, open_entry

    began, cpu_began = time.perf_counter(), cpu_seconds()
    vectors = EmbeddingStore(open_entry(workdir / "entry")).vectors
    weights = (LOGIT_SCALE * torch.from_numpy(np.load(workdir / "classifier.npy"))).T.contiguous()
    rows, classes = len(vectors), weights.shape[1]
    logits, probs = torch.empty(chunk_rows, classes), torch.empty(chunk_rows, classes)
    total = torch.zeros(classes, dtype=torch.float64)
    labels = np.empty(rows, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch reads the read-only map, never writes it
        chunks = [torch.from_numpy(vectors[start : start + chunk_rows]) for start in range(0, rows, chunk_rows)]
    for chunk in chunks:
        z = torch.matmul(chunk, weights, out=logits[: len(chunk)])
        total += torch.softmax(z, dim=-1, out=probs[: len(chunk)]).sum(dim=0).double()
    shift = TAU * torch.log(total / rows).float()
    for index, chunk in enumerate(chunks):
        z = torch.matmul(chunk, weights, out=logits[: len(chunk)]).sub_(shift)
        labels[index * chunk_rows : index * chunk_rows + len(chunk)] = (
            torch.softmax(z, dim=-1, out=probs[: len(chunk)]).argmax(dim=-1).numpy()
        )
    done = time.perf_counter()
    cpu = cpu_seconds() - cpu_began
    return {"labels_s": done - began, "labels_cpu_s": cpu, "peak_rss_gib": peak_rss_gib(), "rows": rows}


def run_streaming(workdir: Path, chunk_rows: int) -> dict:
    import numpy as np
    import torch

    from clipdebias.clip.cache import EmbeddingStore, open_entry
    from clipdebias.pseudolabels.files import pseudo_label_table, write_pseudo_labels
    from clipdebias.pseudolabels.labels import debiased_pseudo_labels
    from clipdebias.pseudolabels.rows import ZeroShotLogits

    began, cpu_began = time.perf_counter(), cpu_seconds()
    store = EmbeddingStore(open_entry(workdir / "entry"))
    classifier = torch.from_numpy(np.load(workdir / "classifier.npy"))
    logits = ZeroShotLogits(store.vectors, classifier, LOGIT_SCALE)
    result = debiased_pseudo_labels(logits, TAU, THRESHOLD, chunk_rows)
    labelled, labelled_cpu = time.perf_counter(), cpu_seconds()
    rows = len(store)
    table = pseudo_label_table(
        result,
        store.ids,
        [f"imagenet:train/{i}" for i in range(rows)],
        store.labels,
        [f"class {c}" for c in range(classifier.shape[0])],
    )
    tabled = time.perf_counter()
    write_pseudo_labels(table, workdir / "pseudolabels.csv", {"tau": TAU})
    done = time.perf_counter()
    np.save(workdir / "streaming_labels.npy", result.label[:NAIVE_CHECK_ROWS])
    return {
        "labels_s": labelled - began,
        "labels_cpu_s": labelled_cpu - cpu_began,
        "table_s": tabled - labelled,
        "csv_s": done - tabled,
        "total_s": done - began,
        "total_cpu_s": cpu_seconds() - cpu_began,
        "peak_rss_gib": peak_rss_gib(),
        "rows": rows,
    }


NAIVE_CHECK_ROWS = 100_000  # rows whose labels must agree between the two variants


class _Biased:
    """Logit rows with a per-class offset added: a teacher that leans to the later classes."""

    ndim = 2

    def __init__(self, rows, bias):
        self.rows, self.bias, self.shape = rows, bias, rows.shape

    def __getitem__(self, part):
        return self.rows[part] + self.bias

    def read_into(self, part, out):  # as ZeroShotLogits.read_into: no chunk allocated
        return self.rows.read_into(part, out).add_(self.bias)


def run_balance(workdir: Path, chunk_rows: int, class_bias: float) -> dict:
    import numpy as np
    import torch

    from clipdebias.clip.cache import EmbeddingStore, open_entry
    from clipdebias.pseudolabels.labels import debiased_pseudo_labels
    from clipdebias.pseudolabels.rows import ZeroShotLogits

    began, cpu_began = time.perf_counter(), cpu_seconds()
    store = EmbeddingStore(open_entry(workdir / "entry"))
    classifier = torch.from_numpy(np.load(workdir / "classifier.npy"))
    bias = torch.linspace(0.0, class_bias, classifier.shape[0])
    logits = _Biased(ZeroShotLogits(store.vectors, classifier, LOGIT_SCALE), bias)
    result = debiased_pseudo_labels(logits, TAU, THRESHOLD, chunk_rows, mode="balance")
    labelled, labelled_cpu = time.perf_counter(), cpu_seconds()
    counts = np.bincount(result.label, minlength=classifier.shape[0])
    raw = np.bincount(result.raw_label, minlength=classifier.shape[0])
    return {
        "labels_s": labelled - began,
        "labels_cpu_s": labelled_cpu - cpu_began,
        "peak_rss_gib": peak_rss_gib(),
        "passes": result.balance.iterations,
        "subsample_rows": getattr(result.balance, "subsample_rows", 0),  # 0 for versions before the subsample
        "subsample_passes": getattr(result.balance, "subsample_iterations", 0),
        "converged": result.balance.converged,
        "worst_relative_gap": float(np.max(np.abs(result.balance.marginal / result.balance.target - 1.0))),
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


def warm_page_cache(path: Path, block: int = 64 << 20) -> float:
    """Reads ``path`` once (seconds taken), so that every variant finds the mapped embeddings in the page
    cache: otherwise the first variant after the kernel dropped them pays for reading 2.4 GiB from disk."""
    began = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(block):
            pass
    return time.perf_counter() - began


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads per variant (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of limit, streaming and balance; fastest kept")
    parser.add_argument("--variants", default="limit,streaming,balance,naive", help="comma-separated, in this order")
    parser.add_argument("--child", choices=["make", "limit", "streaming", "balance", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--child-arg", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.child == "make":
            make_entry(args.workdir, args.rows, args.classes, args.dim)
            print(json.dumps({}))
        elif args.child == "limit":
            print(json.dumps(run_limit(args.workdir, args.child_arg)))
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
    variants = args.variants.split(",")
    threads = ["--threads", str(args.threads)] if args.threads else []
    warmed = warm_page_cache(workdir / "entry" / "index.faiss")
    load_before = load_average()
    runs: dict[str, list[dict]] = {kind: [] for kind in ("limit", "streaming", "balance") if kind in variants}
    for _ in range(args.repeats):
        for kind in runs:
            extra = ["--class-bias", str(args.class_bias)] if kind == "balance" else []
            runs[kind].append(child(kind, workdir, chunk_rows, *extra, *threads))
    best = {kind: min(found, key=lambda run: run["labels_s"]) for kind, found in runs.items()}
    result = {
        "rows": args.rows,
        "classes": args.classes,
        "dim": args.dim,
        "chunk_rows": chunk_rows,
        "cpu_count": os.cpu_count(),
        "threads": args.threads or "torch default",
        "synthetic_entry_s": round(made, 1),
        "page_cache_warm_up_s": round(warmed, 1),
        "load_average_before": load_before,
        **best,
        **{
            f"all_runs_{key}": {kind: [round(run[key], 2) for run in found] for kind, found in runs.items()}
            for key in ("labels_s", "labels_cpu_s")
        },
        "load_average_after": load_average(),
    }
    if "limit" in best and "streaming" in best:
        result["paper_over_limit"] = round(best["streaming"]["labels_s"] / best["limit"]["labels_s"], 3)
        result["paper_total_over_limit"] = round(best["streaming"]["total_s"] / best["limit"]["labels_s"], 3)
        result["paper_over_limit_cpu"] = round(best["streaming"]["labels_cpu_s"] / best["limit"]["labels_cpu_s"], 3)
        result["paper_total_over_limit_cpu"] = round(
            best["streaming"]["total_cpu_s"] / best["limit"]["labels_cpu_s"], 3
        )
    if "balance" in best and "streaming" in best:
        result["balance_over_paper_time"] = round(best["balance"]["labels_s"] / best["streaming"]["labels_s"], 3)
        result["balance_over_paper_cpu"] = round(best["balance"]["labels_cpu_s"] / best["streaming"]["labels_cpu_s"], 3)
    if "naive" in variants:
        result.update(naive_variant(args, workdir))
    result["available_gib_at_start"] = round(available_gib(), 1)
    result["workdir"] = str(workdir)
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def naive_variant(args: argparse.Namespace, workdir: Path) -> dict:
    """The naive variant, at full size when it fits in the free memory, else scaled from fewer rows."""
    naive_need_gib = args.rows * (args.dim + 3 * args.classes) * 4 / 2**30
    fits = available_gib() > 1.5 * naive_need_gib
    naive_rows = args.rows if fits else min(args.naive_rows, args.rows)
    naive = child("naive", workdir, naive_rows)
    scale = args.rows / naive_rows
    return {
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
    }


if __name__ == "__main__":
    main()
