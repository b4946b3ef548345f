"""How much `clipdebias encode` costs over a bare open_clip forward loop, and what the cache saves.

Generates --images JPEG files (a small ImageFolder, 256x256 photos-like noise), loads one model
(random weights, so nothing is downloaded: the time does not depend on the weights), then times
on the same images, model, transform and batch size:

- bare: decode + open_clip's eval transform + ``model.encode_image`` + normalise, in a plain loop;
- encode: ``clipdebias.clip.cache.encode_split`` into a fresh cache (listing fingerprint, DataLoader,
  shards, FAISS index, manifest, meta.json, all written atomically);
- cached: ``encode_split`` again over the finished entry.

Runs alternate (bare, encode, bare, encode, ...) and the median of --repeats is reported, so that
a busy machine hurts both alike. Both wall-clock and CPU time (all threads of this process) are
measured: on a machine shared with other jobs the CPU time is the steadier comparison. Goals:
encode at most 10% slower than bare; cached at least 20x faster than encode.

``--large`` generates 1600x1200 photo-like JPEGs instead (smooth colour waves plus a little noise):
there ``encode`` decodes each at a reduced size (1/2, 1/4 or 1/8 in the DCT, never below twice the
model's input on the shortest side) where the bare loop decodes every pixel. Goal: encode at least 3x
the bare loop's rate; the cosine between the two paths' embeddings of every image is reported too.
``--decode`` picks encode's decoder (``auto``, ``cpu``, ``gpu``; default ``cpu``).

    python benchmarks/encode_overhead.py [--model ViT-B-32] [--images 256] [--batch-size 32]
    python benchmarks/encode_overhead.py --large --model tests/assets/tiny-clip.json --images 64

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

OVERHEAD_GOAL = 0.10
CACHE_SPEEDUP_GOAL = 20.0
LARGE_SPEEDUP_GOAL = 3.0
LARGE_SIZE = (1200, 1600)  # height, width
COSINE_GOAL = 0.995


def make_images(root: Path, count: int, classes: int = 4, size: int = 256, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / "train" / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:05d}.jpg", quality=90)
    return root


def photo(height: int, width: int, seed: int):
    """A photo-like image: smooth colour waves of a random phase and scale plus a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    periods = rng.uniform(0.02, 0.2, 3) * max(height, width)
    phases = rng.uniform(0, 6.3, 3)
    waves = [np.sin(x / periods[0] + phases[0]), np.cos(y / periods[1] + phases[1]), np.sin((x + y) / periods[2])]
    pixels = 127 + 100 * np.stack(waves, -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_photos(
    root: Path, count: int, size: tuple[int, int] = LARGE_SIZE, classes: int = 4, first_seed: int = 0
) -> Path:
    """``count`` photo-like JPEGs of ``size`` (height, width) in an ImageFolder layout under ``root``
    (image ``i`` drawn with seed ``first_seed + i``)."""
    from PIL import Image

    for index in range(count):
        folder = root / "train" / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = photo(*size, seed=first_seed + index)
        Image.fromarray(pixels).save(folder / f"img_{first_seed + index:06d}.jpg", quality=90)
    return root


def cosines(first, second) -> list[float]:
    """Per-image cosine between the embeddings of two finished cache entries."""
    import numpy as np

    from clipdebias.clip.cache import load_embeddings

    ids, a, _ = load_embeddings(first)
    other_ids, b, _ = load_embeddings(second)
    assert ids.tolist() == other_ids.tolist()
    return [float(c) for c in (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)]


def timed(run) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds, result)`` of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bare_loop(source, backbone, batch_size: int) -> None:
    """Decode, transform and encode every image with open_clip directly."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    with torch.inference_mode():
        for start in range(0, len(source), batch_size):
            batch = []
            for index in range(start, min(start + batch_size, len(source))):
                with Image.open(source.path(index)) as image:
                    batch.append(backbone.transform(image.convert("RGB")))
            features = backbone.model.encode_image(torch.stack(batch).to(backbone.device))
            F.normalize(features.float(), dim=-1).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--large", action="store_true", help="1600x1200 photo-like JPEGs (reduced-size decoding)")
    parser.add_argument("--decode", default="cpu", help="encode's decoder: auto, cpu or gpu")
    args = parser.parse_args()

    from clipdebias.clip.backbone import BackboneConfig, load_backbone
    from clipdebias.clip.cache import Decoding, encode_split, eval_decoding
    from clipdebias.data.sources import open_dataset
    from clipdebias.utils.device import encode_workers

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clipdebias-encode-bench-"))
    root = make_photos(workdir / "data", args.images) if args.large else make_images(workdir / "data", args.images)
    backbone = load_backbone(BackboneConfig(model=args.model, pretrained="none", device=args.device))
    source = open_dataset("imagefolder", "train", root)
    workers = encode_workers(None, backbone.device.type)
    decoding = eval_decoding(source, backbone, args.decode, None)
    full_size = Decoding(num_workers=workers)  # every pixel decoded: the bare loop's images, for the cosine
    # Warm-up of both paths: first-call allocations, the file cache, and the one-off imports of
    # faiss and pandas (a fixed ~0.5 s per command that does not grow with the image count).
    bare_loop(source, backbone, args.batch_size)
    encode_split(
        source,
        backbone,
        backbone.transform,
        backbone.transform_id,
        workdir / "cache-warmup",
        data_root=root,
        batch_size=args.batch_size,
        decoding=decoding,
    )
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "encode": [], "cached": []}
    for repeat in range(args.repeats):
        cache = workdir / f"cache-{repeat}"

        def encode(cache: Path = cache):
            return encode_split(
                source,
                backbone,
                backbone.transform,
                backbone.transform_id,
                cache,
                data_root=root,
                batch_size=args.batch_size,
                decoding=decoding,
            )

        wall, cpu, _ = timed(lambda: bare_loop(source, backbone, args.batch_size))
        times["bare"].append((wall, cpu))
        wall, cpu, first = timed(encode)
        times["encode"].append((wall, cpu))
        wall, cpu, again = timed(encode)
        times["cached"].append((wall, cpu))
        assert first.encoded == args.images and again.encoded == 0 and again.was_complete

    def median(name: str, which: int) -> float:
        return statistics.median(run[which] for run in times[name])

    bare, encode, cached = median("bare", 0), median("encode", 0), median("cached", 0)
    bare_cpu, encode_cpu = median("bare", 1), median("encode", 1)
    reference = encode_split(
        source, backbone, backbone.transform, backbone.transform_id, workdir / "cache-full-size",
        data_root=root, batch_size=args.batch_size, decoding=full_size,
    )  # fmt: skip
    cos = cosines(first.entry, reference.entry)
    result = {
        "command": "python benchmarks/encode_overhead.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "images_size": f"{LARGE_SIZE[1]}x{LARGE_SIZE[0]} photo-like" if args.large else "256x256 noise",
        "decode": decoding.name,
        "min_decode_side": decoding.min_side,
        "device": str(backbone.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "num_workers": workers,
        "bare_s": round(bare, 3),
        "encode_s": round(encode, 3),
        "cached_s": round(cached, 4),
        "bare_img_per_s": round(args.images / bare, 1),
        "encode_img_per_s": round(args.images / encode, 1),
        "speedup_wall": round(bare / encode, 2),
        "speedup_cpu": round(bare_cpu / encode_cpu, 2),
        "large_speedup_goal": LARGE_SPEEDUP_GOAL if args.large else None,
        "cosine_to_full_decode_min": round(min(cos), 6),
        "cosine_to_full_decode_mean": round(sum(cos) / len(cos), 6),
        "cosine_goal": COSINE_GOAL,
        "bare_cpu_s": round(bare_cpu, 3),
        "encode_cpu_s": round(encode_cpu, 3),
        "overhead_wall": round(encode / bare - 1, 4),
        "overhead_cpu": round(encode_cpu / bare_cpu - 1, 4),
        "overhead_goal": OVERHEAD_GOAL,
        "cache_speedup": round(encode / cached, 1),
        "cache_speedup_goal": CACHE_SPEEDUP_GOAL,
        "runs_wall_cpu_s": times,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
