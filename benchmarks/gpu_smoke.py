"""GPU smoke test and speed numbers: encode, data loading and training images/s (scripts/gpu_smoke.sh).

Needs no network and no weights (random weights, generated images) and finishes in a few minutes
on one GPU. It measures, each after a warm-up:

- ``encode, tensors``: ViT-B-32 image tower on synthetic 224 px tensors already on the device
  (the model alone), per ``--precision`` of the backbone;
- ``encode, JPEGs``: ``clipdebias encode``'s library call (``cached_embeddings``: decode, CLIP
  transform, model, shards, FAISS index) over generated 256 px JPEGs, with the default number of
  DataLoader workers and with all cores;
- ``encode, --decode``: the same call over generated ~500x375 photo-like JPEGs (ImageNet's typical
  size) with ``--decode gpu`` (torchvision's batched JPEG decoder on the GPU, resize and normalise
  there) and ``--decode cpu`` (Pillow in DataLoader workers), ViT-B-32 fp16, batch 512, each after a
  warm-up run; and the cosine between the two paths' embeddings of every image. Goal: ``gpu`` at least
  8,000 images/s on one H200, cosine at least 0.995. Without a GPU the device path runs on CPU tensors;
- ``training loader``: the unlabeled ImageNet batch stream alone (decode, RandomResizedCrop, 2 weak
  + 2 strong views with RandAugment, pinned copies to the GPU): the most images per second the data
  pipeline can feed the loop;
- ``ssl digits``: one ``clipdebias ssl`` epoch on digits with its defaults (250 steps);
- ``train synthetic``: the training loop (FixMatch + DebiasPL step, EMA teacher, prior) on
  ImageNet-shaped synthetic batches already on the GPU (ResNet-50, 224 px, 1000 classes, multiviews)
  in fp32 and with autocast (bf16, fp16): the model side's speed, to compare with the loader's;
- ``zeroshot``: ``clipdebias zeroshot`` end to end on the generated JPEGs (ViT-B-32 with random
  weights, so accuracies mean nothing) with each student (``head``, ``clip``, ``resnet50``) for a
  few steps: it checks that every student trains on the device; images/s counts confident plus
  unlabeled images of the training steps;
- ``ddp digits``: with two or more GPUs, the same digits epoch under ``torchrun --nproc_per_node 2``,
  checked against one process.

Training images/s count labeled plus unlabeled images per second (an unlabeled image once, however
many views it has). Without a GPU everything runs at toy sizes on the CPU, to check the script.

    PYTHONPATH=. python benchmarks/gpu_smoke.py [--out gpu_smoke.md] [--compile]

Prints a markdown table and writes it to ``--out`` (and the raw numbers to the same stem ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (GPU sizes, or toy CPU sizes to test the script)."""

    encode_batch: int
    encode_batches: int
    encode_precisions: tuple[str, ...]
    jpegs: int
    loader_steps: int
    digits_steps: int
    train_arch: str
    train_image_size: int
    train_batch: int
    train_mu: int
    train_steps: dict[str, int]
    zeroshot_steps: int = 20
    zeroshot_batch: int = 32
    zeroshot_image_size: int = 224
    zeroshot_topk: int = 32  # confident images per class (of 128 per class on a 16-core GPU host)
    decode_jpegs: int = 8192
    decode_batch: int = 512


GPU_SIZES = Sizes(
    encode_batch=256,
    encode_batches=30,
    encode_precisions=("fp32", "fp16", "bf16"),
    jpegs=2048,
    loader_steps=12,
    digits_steps=250,
    train_arch="resnet50",
    train_image_size=224,
    train_batch=32,
    train_mu=5,
    train_steps={"fp32": 40, "bf16": 150, "fp16": 80},
)
CPU_SIZES = Sizes(
    encode_batch=4,
    encode_batches=2,
    encode_precisions=("fp32",),
    jpegs=16,
    loader_steps=2,
    digits_steps=30,
    train_arch="resnet18",
    train_image_size=32,
    train_batch=2,
    train_mu=2,
    train_steps={"fp32": 3, "bf16": 3},
    zeroshot_steps=2,
    zeroshot_batch=2,
    zeroshot_image_size=32,
    zeroshot_topk=2,
    decode_jpegs=16,
    decode_batch=8,
)
DECODE_GOAL = 8000.0  # images/s of encode --decode gpu, ViT-B-32 fp16, one H200 (issue 16)
DECODE_COSINE_GOAL = 0.995
DECODE_SIZES = ((375, 500), (500, 375), (333, 500), (500, 500))  # height, width: ImageNet's common shapes


@dataclass
class Row:
    what: str
    setting: str
    images_per_s: float | None
    note: str = ""


@dataclass
class Report:
    environment: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(self, what: str, setting: str, rate: float | None, note: str = "") -> None:
        self.rows.append(Row(what, setting, rate, note))
        shown = "-" if rate is None else f"{rate:,.0f} img/s"
        print(f"  {what:18s} {setting:44s} {shown:>14s}  {note}", flush=True)

    def markdown(self) -> str:
        lines = [f"- {key}: {value}" for key, value in self.environment.items()]
        lines += ["", "| measurement | setting | images/s | note |", "|---|---|---|---|"]
        for row in self.rows:
            rate = "-" if row.images_per_s is None else f"{row.images_per_s:,.0f}"
            lines.append(f"| {row.what} | {row.setting} | {rate} | {row.note} |")
        return "\n".join(lines) + "\n"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device) -> dict[str, str]:
    import open_clip
    import torch

    import clipdebias

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "GPUs": str(torch.cuda.device_count()),
        "torch": torch.__version__,
        "CUDA": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()),
        "open_clip": open_clip.__version__,
        "clipdebias": clipdebias.__version__,
        "CPU cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
    }
    try:
        import faiss

        info["faiss GPUs"] = str(faiss.get_num_gpus())
    except ImportError:
        info["faiss GPUs"] = "faiss not installed"
    return info


# --- encode -----------------------------------------------------------------------------------------


def encode_tensors(report: Report, device, sizes: Sizes) -> None:
    import torch

    from clipdebias.clip.backbone import BackboneConfig, load_backbone

    for precision in sizes.encode_precisions:
        backbone = load_backbone(BackboneConfig("ViT-B-32", "none", precision, str(device)))
        pixels = torch.randn(sizes.encode_batch, 3, 224, 224, device=device)
        backbone.encode_images(pixels)  # warm-up (cuDNN/cuBLAS choices, allocator)
        _sync(device)
        started = time.perf_counter()
        for _ in range(sizes.encode_batches):
            backbone.encode_images(pixels)
        _sync(device)
        rate = sizes.encode_batch * sizes.encode_batches / (time.perf_counter() - started)
        report.add("encode, tensors", f"ViT-B-32, {precision}, batch {sizes.encode_batch}", rate, "model only")
        del backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _folder_in_parts(root: Path, count: int, make: Callable, args_of: Callable[[int, int, int], tuple]) -> Path:
    """``count`` images written by parallel processes, each ``make(root / f"part{p}", *args_of(p, n,
    per_part))`` writing ``n`` images into its own class folder (so file names never collide), then
    gathered under one ImageFolder split; returns its ``train`` folder."""
    from concurrent.futures import ProcessPoolExecutor

    parts = max(1, min(os.cpu_count() or 1, 16))
    per_part = -(-count // parts)
    with ProcessPoolExecutor(parts) as pool:
        futures = [
            pool.submit(make, root / f"part{p}", *args_of(p, min(per_part, count - p * per_part), per_part))
            for p in range(parts)
            if count - p * per_part > 0
        ]
        for future in futures:
            future.result()
    train = root / "folder" / "train"
    train.mkdir(parents=True, exist_ok=True)
    for part in sorted(root.glob("part*")):
        (part / "train" / "class_0").rename(train / part.name)
    return train


def make_jpegs(root: Path, count: int) -> Path:
    from encode_overhead import make_images

    _folder_in_parts(root, count, make_images, lambda p, n, per_part: (n, 1, 256, p))
    return root / "folder"


def encode_jpegs(report: Report, device, folder: Path, sizes: Sizes, workdir: Path) -> None:
    from clipdebias.clip.backbone import BackboneConfig, load_backbone
    from clipdebias.clip.cache import cached_embeddings
    from clipdebias.data.sources import open_dataset
    from clipdebias.utils.device import encode_workers

    precision = "fp16" if device.type == "cuda" else "fp32"
    backbone = load_backbone(BackboneConfig("ViT-B-32", "none", precision, str(device)))
    source = open_dataset("imagefolder", "train", folder)
    auto = encode_workers(None, device.type)
    choices = [auto] if device.type == "cpu" else sorted({auto, os.cpu_count() or 1})
    for index, workers in enumerate(choices):
        cache = workdir / f"cache-{index}"
        result = cached_embeddings(source, backbone, cache, str(folder), batch_size=256, num_workers=workers)
        label = "auto" if workers == auto else "all cores"
        report.add(
            "encode, JPEGs",
            f"ViT-B-32 {precision}, {workers} workers ({label})",
            result.encoded / result.elapsed_s,
            f"{result.encoded} images of 256 px, cache writes included",
        )


def make_photo_jpegs(root: Path, count: int) -> Path:
    """``count`` photo-like JPEGs of :data:`DECODE_SIZES` in one ImageFolder, written by parallel processes;
    as in ImageNet, a few are grayscale (1 in 50), progressive (1 in 50) or CMYK (1 in 1,000)."""
    from encode_overhead import make_photos
    from PIL import Image

    train = _folder_in_parts(root, count, make_photos, lambda p, n, per_part: (n, DECODE_SIZES[p % 4], 1, p * per_part))
    for number, path in enumerate(sorted(train.rglob("*.jpg"))):
        kind = {7: "L", 23: "progressive"}.get(number % 50) or ("CMYK" if number % 1000 == 11 else None)
        if kind is not None:
            with Image.open(path) as image:
                image.load()
            progressive = kind == "progressive"
            (image if progressive else image.convert(kind)).save(path, quality=90, progressive=progressive)
    return root / "folder"


def encode_decode(report: Report, device, sizes: Sizes, workdir: Path) -> None:
    """``encode`` with ``--decode gpu`` and ``--decode cpu`` on the same photo-like JPEGs, and the cosine
    between their embeddings (on a CPU machine the device path runs on CPU tensors)."""
    import numpy as np

    from clipdebias.clip.backbone import BackboneConfig, load_backbone
    from clipdebias.clip.cache import Decoding, encode_split, eval_decoding, load_embeddings
    from clipdebias.clip.jpeg_batches import DevicePreprocess, JpegBatches, min_decode_side, read_threads
    from clipdebias.data.sources import open_dataset

    folder = make_photo_jpegs(workdir / "photos", sizes.decode_jpegs)
    precision = "fp16" if device.type == "cuda" else "fp32"
    backbone = load_backbone(BackboneConfig("ViT-B-32", "none", precision, str(device)))
    source = open_dataset("imagefolder", "train", folder)
    min_side = min_decode_side(backbone.preprocess_cfg)
    on_cpu_tensors = JpegBatches(
        source, DevicePreprocess(backbone.preprocess_cfg, device), backbone.transform, min_side, read_threads(None)
    )
    on_gpu = device.type == "cuda"
    paths = {
        "gpu": eval_decoding(source, backbone, "gpu", None) if on_gpu else Decoding(0, min_side, on_cpu_tensors),
        "cpu": eval_decoding(source, backbone, "cpu", None),
    }
    entries = {}
    for name, decoding in paths.items():
        for run in ("warm-up", "measured"):
            result = encode_split(
                source, backbone, backbone.transform, backbone.transform_id, workdir / f"decode-{name}-{run}",
                batch_size=sizes.decode_batch, decoding=decoding,
            )  # fmt: skip
        entries[name] = result.entry
        rate = result.encoded / result.elapsed_s
        goal = f"; goal >= {DECODE_GOAL:,.0f} on one H200" if name == "gpu" and device.type == "cuda" else ""
        where = "" if device.type == "cuda" or name == "cpu" else " (device path on CPU tensors)"
        report.add(
            "encode, --decode",
            f"{name}{where}, ViT-B-32 {precision}, batch {sizes.decode_batch}",
            rate,
            f"{result.encoded} photo-like JPEGs ~500x375 (2% gray, 2% progressive, 0.1% CMYK), "
            f"cache writes included{goal}",
        )
    ids, gpu, _ = load_embeddings(entries["gpu"])
    cpu_ids, cpu, _ = load_embeddings(entries["cpu"])
    assert ids.tolist() == cpu_ids.tolist()
    cos = (gpu * cpu).sum(-1) / np.linalg.norm(gpu, axis=-1) / np.linalg.norm(cpu, axis=-1)
    report.add(
        "encode, --decode",
        "cosine gpu vs cpu embeddings",
        None,
        f"min {cos.min():.6f}, mean {cos.mean():.6f} over {len(cos)} images "
        f"(goal >= {DECODE_COSINE_GOAL}; random weights)",
    )


# --- training ---------------------------------------------------------------------------------------


def training_loader(report: Report, device, folder: Path, sizes: Sizes) -> None:
    import numpy as np

    from clipdebias.data.sources import open_dataset
    from clipdebias.data.streams import StreamSpec, build_streams
    from clipdebias.utils.device import training_workers

    source = open_dataset("imagefolder", "train", folder)
    rows = np.arange(len(source))
    auto = training_workers()
    choices = [auto] if device.type == "cpu" else sorted({auto, os.cpu_count() or 1})
    for workers in choices:
        spec = StreamSpec(
            dataset="imagenet",
            batch_size=sizes.train_batch,
            mu=sizes.train_mu,
            views=2,
            seed=0,
            image_size=sizes.train_image_size,
            workers=workers,
            eval_batch_size=64,
        )
        streams = build_streams(source, rows[:8], rows[8:], source, rows[:8], spec, device)
        batches = iter(streams.unlabeled.batches(0, sizes.loader_steps + 1))
        next(batches)  # warm-up: starts the workers
        started, images = time.perf_counter(), 0
        for batch in batches:
            images += int(batch.indices.shape[0])
        _sync(device)
        rate = images / (time.perf_counter() - started)
        label = "auto" if workers == auto else "all cores"
        report.add(
            "training loader",
            f"{sizes.train_image_size} px, 2 weak + 2 strong views, {workers} workers ({label})",
            rate,
            "unlabeled stream alone: the most the loop can be fed",
        )
        del streams, batches


class _SyntheticStream:
    """The same random batch every step, already on the device (no data loading at all)."""

    def __init__(self, make: Callable[[], object]):
        self.batch = make()

    def batches(self, epoch: int, steps: int) -> Iterator[object]:
        for _ in range(steps):
            yield self.batch


def synthetic_training(report: Report, device, sizes: Sizes, compile_too: bool) -> None:
    import torch

    from clipdebias.data.batches import LabeledBatch, UnlabeledBatch
    from clipdebias.metrics import eval_result
    from clipdebias.training.loop import Runtime, train
    from clipdebias.training.models import build_model
    from clipdebias.training.optim import cosine_schedule, make_sgd
    from clipdebias.training.step import TrainConfig

    classes, size, batch, mu = 1000, sizes.train_image_size, sizes.train_batch, sizes.train_mu

    def images(count: int) -> torch.Tensor:
        return torch.randn(count, 3, size, size, device=device)

    def labels(count: int) -> torch.Tensor:
        return torch.randint(0, classes, (count,), device=device)

    labeled = _SyntheticStream(lambda: LabeledBatch(images(batch), labels(batch), labels(batch)))
    unlabeled = _SyntheticStream(
        lambda: UnlabeledBatch(
            (images(mu * batch),) * 2, (images(mu * batch),) * 2, labels(mu * batch), labels(mu * batch)
        )
    )
    eval_images, eval_labels = images(64), labels(64)
    settings = [(p, False) for p in sizes.train_steps] + ([("bf16", True)] if compile_too else [])
    for precision, compiled in settings:
        steps = sizes.train_steps[precision]
        torch.manual_seed(0)
        model = build_model(sizes.train_arch, classes, 3, size)
        optimizer = make_sgd(model.to(device), lr=0.003, weight_decay=1e-4, momentum=0.9)
        config = TrainConfig(num_classes=classes, epochs=2, steps_per_epoch=steps, threshold=0.7, lambda_u=10.0)
        runtime = Runtime(precision=precision, channels_last=device.type == "cuda", compile=compiled)
        started = time.perf_counter()
        result = train(
            config,
            model,
            optimizer,
            cosine_schedule(optimizer, 2 * steps),
            labeled,
            unlabeled,
            lambda m: eval_result(m(eval_images).float(), eval_labels),
            device=device,
            runtime=runtime,
        )
        total = time.perf_counter() - started
        # Epoch 1 is the warm-up (cuDNN autotuning, compilation); epoch 2 is measured.
        images_per_epoch = steps * (batch + mu * batch)
        stepping = result.history[1]["elapsed_s"] - result.history[0]["elapsed_s"]
        setting = f"{sizes.train_arch} {size} px, B {batch} + {mu * batch} x 2 views, {precision}"
        note = f"{steps} steps" + (f"; torch.compile, {total - 2 * stepping:.0f} s to compile" if compiled else "")
        report.add("train synthetic", setting + (" + compile" if compiled else ""), images_per_epoch / stepping, note)
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _ssl_args(device, steps: int, out: Path) -> list[str]:
    return [
        "ssl",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--steps-per-epoch",
        str(steps),
        "--device",
        device.type,
        "--out",
        str(out),
    ]


def ssl_digits(report: Report, device, sizes: Sizes, workdir: Path) -> dict:
    from clipdebias.commands.ssl import resolve_ssl_config, run_ssl

    config = resolve_ssl_config(
        "digits", workdir / "digits-1", epochs=1, steps_per_epoch=sizes.digits_steps, device=device.type
    )
    metrics = run_ssl(config)
    report.add(
        "ssl digits",
        f"1 epoch, {sizes.digits_steps} steps, B 16 + 64, 1 process",
        metrics["images_per_s"],
        f"top-1 {metrics['top1']:.1f}% after one epoch",
    )
    return metrics


def ddp_digits(report: Report, device, sizes: Sizes, workdir: Path, single: dict) -> None:
    import torch

    if device.type != "cuda" or torch.cuda.device_count() < 2:
        report.add("ddp digits", "torchrun, 2 processes", None, f"skipped: {torch.cuda.device_count()} GPU(s)")
        return
    out = workdir / "digits-2"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clipdebias",
        *_ssl_args(device, sizes.digits_steps, out),
    ]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    if done.returncode != 0:
        report.add("ddp digits", "torchrun, 2 processes", None, "FAILED: " + done.stderr.strip().splitlines()[-1])
        return
    metrics = json.loads((out / "metrics.json").read_text())
    same = abs(metrics["top1"] - single["top1"]) <= 5.0 and metrics["world_size"] == 2
    report.add(
        "ddp digits",
        f"1 epoch, {sizes.digits_steps} steps, 2 processes",
        metrics["images_per_s"],
        f"top-1 {metrics['top1']:.1f}% vs {single['top1']:.1f}% in 1 process: {'ok' if same else 'MISMATCH'}",
    )


# --- zeroshot ---------------------------------------------------------------------------------------


def _with_val_split(folder: Path, per_class: int = 8) -> Path:
    """``folder`` (``train/<class>/*.jpg``) with a ``val`` split of links to a few train images."""
    for class_dir in sorted((folder / "train").iterdir()):
        target = folder / "val" / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (target / image.name).symlink_to(image)
    return folder


def zeroshot_students(report: Report, device, folder: Path, sizes: Sizes, workdir: Path) -> None:
    from clipdebias.commands.zeroshot.config import STUDENTS, resolve_zeroshot_config
    from clipdebias.commands.zeroshot.run import run_zeroshot

    for student in STUDENTS:
        options = dict(
            data_root=str(folder), model="ViT-B-32", pretrained="none", device=device.type, epochs=1,
            steps_per_epoch=sizes.zeroshot_steps, batch_size=sizes.zeroshot_batch,
            select_topk_per_class=sizes.zeroshot_topk,
            cache_dir=str(workdir / "cache-zeroshot"), report=False, warmup_epochs=0,
        )  # fmt: skip
        if student == "resnet50":
            options["image_size"] = sizes.zeroshot_image_size
        config = resolve_zeroshot_config("imagefolder", workdir / f"zeroshot-{student}", student=student, **options)
        metrics = run_zeroshot(config).metrics
        images = metrics["steps"] * config.batch_size * (1 + config.mu)
        report.add(
            "zeroshot",
            f"student {student}, {metrics['steps']} steps, B {config.batch_size} + {config.mu} x {config.batch_size}",
            images / metrics["elapsed_s"],
            f"on {device.type}, random weights; the time includes evaluating both splits",
        )


def _guarded(report: Report, what: str, step: Callable[[], object]) -> object:
    """Run ``step``; a failure becomes a FAILED row (and a traceback on stderr) so that the other
    measurements still run: the script is often run once, on a borrowed machine."""
    import traceback

    try:
        return step()
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        traceback.print_exc()
        report.add(
            what,
            "-",
            None,
            f"FAILED: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
        )
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_smoke.md"))
    parser.add_argument(
        "--compile", action="store_true", help="also time bf16 training under torch.compile (slow start)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to put generated images and runs")
    args = parser.parse_args()

    from clipdebias.utils.device import resolve_device

    device = resolve_device("auto")
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    report = Report(environment=environment(device))
    if device.type != "cuda":
        print("no CUDA GPU: running the toy CPU version (numbers only check the script)", flush=True)
        report.environment["note"] = "no CUDA GPU: toy CPU sizes"
    for key, value in report.environment.items():
        print(f"{key}: {value}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as temp:
        workdir = Path(temp)
        folder = make_jpegs(workdir / "images", sizes.jpegs)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("encode, tensors", lambda: encode_tensors(report, device, sizes)),
            ("encode, JPEGs", lambda: encode_jpegs(report, device, folder, sizes, workdir)),
            ("encode, --decode", lambda: encode_decode(report, device, sizes, workdir)),
            ("training loader", lambda: training_loader(report, device, folder, sizes)),
            ("train synthetic", lambda: synthetic_training(report, device, sizes, args.compile)),
            ("zeroshot", lambda: zeroshot_students(report, device, _with_val_split(folder), sizes, workdir)),
        ]
        for what, step in steps:
            _guarded(report, what, step)
        single = _guarded(report, "ssl digits", lambda: ssl_digits(report, device, sizes, workdir))
        if isinstance(single, dict):
            _guarded(report, "ddp digits", lambda: ddp_digits(report, device, sizes, workdir, single))
    report.environment["total time"] = f"{time.perf_counter() - started:.0f} s"
    text = report.markdown()
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"environment": report.environment, "rows": [asdict(r) for r in report.rows]}, indent=2)
    )
    print("\n" + text)
    print(f"written to {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
