"""How close reduced-size JPEG decoding stays to the full decode, for each shortest side it may keep.

Generates photo-like JPEGs (benchmarks/encode_overhead.py's ``photo``) of a few sizes, then for each
factor F in --factors decodes them keeping at least F x the model's input size on the shortest side
(``read_image(path, min_side=F * size)``), runs the model's eval transform and the image tower, and
compares with the full decode: per-image cosine of the embeddings, and the mean absolute difference
of the normalised input pixels. Random weights (``--pretrained none``): nothing is downloaded, and
trained weights are not available here; the pixel difference is what any weights see.

    python benchmarks/draft_cosine.py [--model ViT-B-32] [--factors 1 2] [--per-size 4]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = ((375, 500), (500, 375), (768, 1024), (1200, 1600), (1500, 2000), (3000, 4000))  # height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--per-size", type=int, default=4)
    args = parser.parse_args()

    import torch
    from encode_overhead import photo
    from PIL import Image

    from clipdebias.clip.backbone import BackboneConfig, load_backbone
    from clipdebias.data.image_files import read_image

    backbone = load_backbone(BackboneConfig(model=args.model, pretrained="none", device="cpu"))
    size = max(backbone.preprocess_cfg["size"])
    folder = Path(tempfile.mkdtemp(prefix="clipdebias-draft-"))
    paths = []
    for height, width in SIZES:
        for seed in range(args.per_size):
            path = folder / f"{width}x{height}-{seed}.jpg"
            Image.fromarray(photo(height, width, seed)).save(path, quality=90)
            paths.append(path)

    def inputs(min_side: int | None) -> torch.Tensor:
        return torch.stack([backbone.transform(read_image(p, min_side)) for p in paths])

    full = inputs(None)
    reference = backbone.encode_images(full)
    result: dict = {
        "command": "python benchmarks/draft_cosine.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "input_size": size,
        "images": {f"{w}x{h}": args.per_size for h, w in SIZES},
        "factors": {},
    }
    for factor in args.factors:
        reduced = inputs(factor * size)
        cos = (backbone.encode_images(reduced) * reference).sum(-1)
        by_size = {}
        for number, (height, width) in enumerate(SIZES):
            part = slice(number * args.per_size, (number + 1) * args.per_size)
            decoded = read_image(paths[number * args.per_size], factor * size).size
            by_size[f"{width}x{height}"] = {
                "decoded_at": f"{decoded[0]}x{decoded[1]}",
                "cosine_min": round(float(cos[part].min()), 6),
                "pixel_mean_abs_diff": round(float((reduced[part] - full[part]).abs().mean()), 5),
            }
        result["factors"][str(factor)] = {"cosine_min": round(float(cos.min()), 6), "by_size": by_size}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
