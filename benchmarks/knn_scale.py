"""Recall@K and time of the kNN search over cached embeddings (clipdebias.clip.neighbours), exact
against IVF, on clustered synthetic CLIP-like embeddings, with a projection to ImageNet's size.

Data (``--rows`` L2-normalised ``--dim``-d vectors): a direction shared by all images, 100
superclasses, ``--clusters`` classes of Zipf-like sizes (largest / smallest ~ 10), 4 modes per class,
a 32-d "nuisance" variation shared by all classes (pose, background: it makes images of different
classes neighbours) and isotropic noise of a per-class width. The script prints how often the
nearest neighbour is of the same class (0.87 at 100k rows) and the mean cosine within a class,
within a superclass and between unrelated images (0.43 / 0.33 / 0.23). The shared variation makes
the neighbourhoods hard for an index: without it (well-separated clusters) an IVF index had recall
1 at any nprobe, with it IVF-Flat probing 5% of its lists finds 82% of the neighbours. Random unit
vectors would be a poor proxy too: they have no neighbourhood structure at all.

Measured, with ``--threads`` FAISS / torch threads:

- the exact neighbours of ``--queries`` random rows (the ground truth of recall@K);
- ``exact``: the brute-force search (``faiss.knn``, inner product) of ``--exact-queries`` rows against
  all rows, scaled linearly to all N queries (its cost is exactly linear in the queries) and as N^2
  to the full size;
- ``hnsw`` (the library's approximate method, ``build_hnsw`` + ``HNSWSearch``) for each ``--hnsw-m``:
  building the graph (efConstruction 40), then for each ``--ef`` searching ALL rows (each without
  itself) in the library's blocks, timed; recall@K on the ``--queries`` rows. Projected to the full
  size as (build + search) x (N_full / N) x log(N_full) / log(N) (an insertion and a search each
  visit ~log N nodes); measured 100k -> 200k, both grew x1.9-2.0 (the formula says x2.1);
- ``ivf`` for each ``--nprobe``, for comparison: an ``IndexIVFFlat`` with ``nlist = 4 sqrt(N)`` (10
  k-means iterations on at most 64 vectors per list), searched the same way; projected as training
  x (N_full / N) + searching x (N_full / N)^1.5 (each query scans nprobe lists of ~sqrt(N) vectors).

With ``--rows 1281167`` the numbers at full size are measured, not projected.

    PYTHONPATH=. python benchmarks/knn_scale.py [--rows 100000] [--hnsw-m 16,32] [--ef 32,64,128] [--threads 2]

Prints one JSON object and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import faiss
import numpy as np
import torch

from clipdebias.clip.neighbours import HNSW_EF_CONSTRUCTION, ExactSearch, HNSWSearch, build_hnsw, drop_self

IMAGENET_TRAIN_IMAGES = 1_281_167
NUISANCE_DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rows: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors [rows, dim], class [rows], superclass [rows])``: see the module docstring."""
    rng = np.random.default_rng(seed)
    common = _unit(rng.normal(size=dim))
    supers = _unit(rng.normal(size=(100, dim)))
    class_super = rng.integers(0, 100, size=clusters)
    centres = _unit(supers[class_super] + 0.9 * _unit(rng.normal(size=(clusters, dim))))
    modes = _unit(centres[:, None, :] + 0.5 * _unit(rng.normal(size=(clusters, 4, dim))))
    nuisance = _unit(rng.normal(size=(NUISANCE_DIM, dim)))  # pose, background...: shared by all classes
    sizes = 1.0 / (1.0 + 9.0 * rng.random(clusters))  # Zipf-like: 10x between the largest and smallest
    label = rng.choice(clusters, size=rows, p=sizes / sizes.sum())
    mode = rng.integers(0, 4, size=rows)
    width = rng.uniform(0.3, 0.5, size=clusters)
    vectors = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 65536):
        part = slice(start, min(start + 65536, rows))
        count = part.stop - start
        noise = rng.normal(size=(count, dim)).astype(np.float32) / np.sqrt(dim)
        shared = rng.normal(size=(count, NUISANCE_DIM)).astype(np.float32) / np.sqrt(NUISANCE_DIM) @ nuisance
        vectors[part] = _unit(
            0.7 * common + 0.7 * modes[label[part], mode[part]] + shared + width[label[part], None] * noise
        )
    return vectors, label, class_super[label]


def cosine_profile(vectors: np.ndarray, label: np.ndarray, supers: np.ndarray, rng: np.random.Generator) -> dict:
    pairs = rng.integers(0, len(vectors), size=(200_000, 2))
    cos = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    same = label[pairs[:, 0]] == label[pairs[:, 1]]
    same_super = (supers[pairs[:, 0]] == supers[pairs[:, 1]]) & ~same
    return {
        "within_class": float(cos[same].mean()) if same.any() else None,
        "within_superclass": float(cos[same_super].mean()),
        "unrelated": float(cos[~same & ~same_super].mean()),
    }


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--full-rows", type=int, default=IMAGENET_TRAIN_IMAGES)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=2000, help="rows whose recall is measured")
    parser.add_argument("--exact-queries", type=int, default=8192, help="rows timed for the exact search")
    parser.add_argument("--hnsw-m", default="16,32", help="HNSW links per node to try")
    parser.add_argument("--ef", default="32,64,128", help="HNSW efSearch values to try")
    parser.add_argument("--nprobe", default="16,64", help="IVF-Flat nprobe values to try ('' = none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed + 1)
    began = time.perf_counter()
    vectors, label, supers = clustered(args.rows, args.dim, args.clusters, args.seed)
    made_s = time.perf_counter() - began
    result: dict = {
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "faiss": faiss.__version__,
        "data_s": round(made_s, 1),
        "cosine": cosine_profile(vectors, label, supers, rng),
    }
    scale = args.full_rows / args.rows
    queries = np.sort(rng.choice(args.rows, size=min(args.queries, args.rows), replace=False))
    exact = ExactSearch(vectors, args.k)
    _, nearest = faiss.knn(vectors[queries], vectors, args.k + 1, faiss.METRIC_INNER_PRODUCT)
    truth = drop_self(queries, nearest, nearest, args.k)[0]
    result["nearest_same_class"] = round(float((label[truth[:, 0]] == label[queries]).mean()), 3)
    timed = min(args.exact_queries, args.rows)
    began = time.perf_counter()
    exact.block(0, timed)
    exact_s = (time.perf_counter() - began) * args.rows / timed
    result["exact"] = {"seconds": round(exact_s, 1), "full_size_s": round(exact_s * scale**2, 1), "recall": 1.0}
    log_scale = math.log(args.full_rows) / math.log(args.rows)
    result["hnsw"] = []
    for m in (int(value) for value in args.hnsw_m.split(",")):
        began = time.perf_counter()
        index = build_hnsw(vectors, m, HNSW_EF_CONSTRUCTION)
        build_s = time.perf_counter() - began
        for ef in (int(value) for value in args.ef.split(",")):
            found, search_s = _search_all(HNSWSearch(vectors, args.k, index, ef), args.rows)
            result["hnsw"].append(
                {
                    "m": m,
                    "ef_construction": HNSW_EF_CONSTRUCTION,
                    "ef_search": ef,
                    "recall": round(recall(found[queries], truth), 4),
                    "build_s": round(build_s, 1),
                    "search_s": round(search_s, 1),
                    "full_size_s": round((build_s + search_s) * scale * log_scale, 1),
                }
            )
        del index
    nlist = max(1, min(int(4 * math.sqrt(args.rows)), args.rows // 39))
    result["ivf"] = []
    if args.nprobe:
        began = time.perf_counter()
        quantizer = faiss.IndexFlatIP(args.dim)
        ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 64
        ivf.train(vectors)
        ivf.add(vectors)
        build_s = time.perf_counter() - began
        for nprobe in (int(value) for value in args.nprobe.split(",")):
            ivf.nprobe = nprobe
            found, search_s = _search_all(_FaissSearch(vectors, args.k, ivf), args.rows)
            result["ivf"].append(
                {
                    "nlist": nlist,
                    "nprobe": nprobe,
                    "recall": round(recall(found[queries], truth), 4),
                    "build_s": round(build_s, 1),
                    "search_s": round(search_s, 1),
                    "full_size_s": round(build_s * scale + search_s * scale**1.5, 1),
                }
            )
    print(json.dumps(result, indent=2))
    what = "measured" if args.rows == args.full_rows else "projected"
    print(f"\n| method | recall@{args.k} | time at {args.rows:,} rows | {what} at {args.full_rows:,} rows |")
    print("|---|---|---|---|")
    print(f"| exact (faiss.knn) | 1 | {exact_s:.0f} s | {exact_s * scale**2 / 60:.0f} min |")
    for row in result["hnsw"]:
        print(
            f"| HNSW, M {row['m']}, efSearch {row['ef_search']} | {row['recall']:.3f} | "
            f"{row['build_s'] + row['search_s']:.0f} s (build {row['build_s']:.0f}, search {row['search_s']:.0f}) | "
            f"{row['full_size_s'] / 60:.1f} min |"
        )
    for row in result["ivf"]:
        print(
            f"| IVF-Flat, nlist {row['nlist']}, nprobe {row['nprobe']} | {row['recall']:.3f} | "
            f"{row['build_s'] + row['search_s']:.0f} s (build {row['build_s']:.0f}, search {row['search_s']:.0f}) | "
            f"{row['full_size_s'] / 60:.1f} min |"
        )


class _FaissSearch(HNSWSearch):
    """Any FAISS index searched the way the library searches its HNSW graph (self dropped)."""

    def __init__(self, vectors: np.ndarray, k: int, index: faiss.Index):
        self.vectors, self.k, self.index = vectors, k, index


def _search_all(searcher: HNSWSearch, rows: int) -> tuple[np.ndarray, float]:
    """Every row's neighbours, in the library's blocks; ``(indices, seconds)``."""
    began = time.perf_counter()
    found = np.concatenate([searcher.block(start, min(start + 16384, rows))[0] for start in range(0, rows, 16384)])
    return found, time.perf_counter() - began


if __name__ == "__main__":
    main()
