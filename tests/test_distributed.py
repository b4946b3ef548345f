"""torchrun / DDP on CPU with gloo: sharded batches, ranks that agree, 2 processes = 1 process,
a 2-process checkpoint resumed in 1 process, 2-process encoding; AMP and torch.compile options."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import StopTraining, make_image_folder, stop_after_first_epoch
from torch import nn

from clipdebias.cli import main
from clipdebias.clip.backbone import BackboneConfig, load_backbone
from clipdebias.clip.cache import encode_split, load_embeddings, open_entry, read_manifest
from clipdebias.data.augment import GrayAugment
from clipdebias.data.sources import open_dataset
from clipdebias.data.streams import GrayStream, Shard, StreamSpec, _PlanBatches, build_streams, epoch_plan
from clipdebias.metrics import PseudoLabelCounter, eval_counts, eval_result, eval_result_from_counts
from clipdebias.training.loop import Runtime, train
from clipdebias.training.optim import cosine_schedule, make_sgd
from clipdebias.training.run_folder import RunFolder
from clipdebias.training.step import TrainConfig
from clipdebias.utils import distributed
from clipdebias.utils.errors import UserError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env(**extra: str) -> dict[str, str]:
    # One OpenMP thread per process: two processes share the test machine's cores.
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", **extra)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- sharding, pure -------------------------------------------------------------------------------


def test_shard_slices_split_a_global_batch_evenly_and_completely():
    parts = [distributed.shard_slice(12, r, 3) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="evenly"):
        distributed.shard_slice(10, 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard_slice(8, 2, 2)


def test_plan_batches_of_all_ranks_are_the_single_process_batches():
    single = _PlanBatches(num_rows=11, batch_size=6, seed=3, stream=2)
    shards = [_PlanBatches(11, 6, 3, 2, Shard(r, 3)) for r in range(3)]
    for sampler in (single, *shards):
        sampler.epoch, sampler.steps = 4, 5
    whole = list(single)
    parts = [list(s) for s in shards]
    assert len(whole) == 5 and all(len(p) == 5 for p in parts)
    for step, batch in enumerate(whole):
        # Rank r holds rows [2r, 2r + 2) of every global batch, with the same per-image seeds.
        assert sum((p[step] for p in parts), []) == batch
    positions, seeds = epoch_plan(11, 6, 5, 3, 2, 4)
    assert [pair for pair in whole[0]] == list(zip(positions[0].tolist(), seeds[0].tolist()))


def test_gray_stream_ranks_see_the_single_process_views():
    images = torch.rand(9, 1, 8, 8)
    labels = torch.arange(9) % 3
    rows = torch.arange(100, 109)

    def stream(shard: Shard) -> GrayStream:
        return GrayStream(images, labels, rows, 4, seed=1, stream=2, augment=GrayAugment(), views=1, shard=shard)

    whole = list(stream(Shard()).batches(epoch=2, steps=3))
    parts = [list(stream(Shard(r, 2)).batches(epoch=2, steps=3)) for r in range(2)]
    for step, batch in enumerate(whole):
        for field in ("weak", "strong"):
            joined = torch.cat([getattr(p[step], field)[0] for p in parts])
            assert torch.equal(joined, getattr(batch, field)[0])
        assert torch.cat([p[step].indices for p in parts]).tolist() == batch.indices.tolist()


def test_eval_counts_of_parts_add_up_to_the_whole():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator)
    targets = torch.randint(0, 7, (50,), generator=generator)
    parts = (
        eval_counts(logits[0::3], targets[0::3])
        + eval_counts(logits[1::3], targets[1::3])
        + eval_counts(logits[2::3], targets[2::3])
    )
    assert eval_result_from_counts(parts) == eval_result(logits, targets)
    with pytest.raises(ValueError, match="empty"):
        eval_result_from_counts(torch.zeros(15, dtype=torch.long))


def test_pseudo_label_counter_reduces_before_it_reports():
    counter = PseudoLabelCounter(3)
    counter.add(torch.tensor([0, 2]), torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))
    doubled = counter.result(reduce=lambda t: 2 * t)  # what a sum over two identical ranks gives
    assert (doubled.rows, doubled.confident, doubled.correct, doubled.known) == (4, 4, 2, 4)
    assert doubled.class_counts == [2, 0, 2] and counter.result().class_counts == [1, 0, 1]


def test_single_process_helpers_are_identities(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    value = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(value) is value
    assert distributed.on_main(lambda: 5) == 5
    with distributed.session("cpu") as info:
        assert not info.launched and not distributed.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        distributed.launch_info()


# --- two processes on CPU (gloo) --------------------------------------------------------------------

_TINY_LOOP = TrainConfig(
    num_classes=10, epochs=2, steps_per_epoch=4, tau=0.4, threshold=0.3, prior_momentum=0.9, ema_momentum=0.8
)


class _PoisonedOnRankOne(nn.Module):
    """A linear model whose output is NaN on rank 1 only, in its ``step``-th training forward pass."""

    def __init__(self, step: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.step, self.calls = step, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.net(inputs)
        if self.training:
            self.calls += 1
            if self.calls == self.step and distributed.rank() == 1:
                logits = logits * float("nan")
        return logits


def _tiny_training(out: str, poison_step: int | None = None) -> dict:
    """A short DebiasPL run on digits with a BatchNorm-free model, in this process's share."""
    with distributed.session("cpu"):
        train_split, val = open_dataset("digits", "train"), open_dataset("digits", "val")
        rows = np.arange(400)
        spec = StreamSpec(
            dataset="digits", batch_size=8, mu=2, views=1, seed=0, image_size=8, workers=0, eval_batch_size=64
        )
        streams = build_streams(train_split, rows[:40], rows[40:], val, np.arange(150), spec, torch.device("cpu"))
        torch.manual_seed(0)
        model = (
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10)) if poison_step is None else _PoisonedOnRankOne(poison_step)
        )
        optimizer = make_sgd(model, lr=0.5, weight_decay=0.0, momentum=0.9)
        scheduler = cosine_schedule(optimizer, _TINY_LOOP.epochs * _TINY_LOOP.steps_per_epoch)
        run = RunFolder(out, writes=distributed.is_main_process())
        result = train(
            _TINY_LOOP, model, optimizer, scheduler, streams.labeled, streams.unlabeled, streams.evaluate, run=run
        )
        return {
            "history": [{k: v for k, v in r.items() if k != "elapsed_s"} for r in result.history],
            "prior": result.prior,
            "weights": distributed.state_digest(model.state_dict()),
            "world_size": result.world_size,
        }


def _train_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    summary = _tiny_training(out)
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))


def _start_two(function, *args) -> None:
    """Run ``function(rank, 2, port, *args)`` in two processes and wait for both. Forked, they start
    in a second (spawned ones import everything again); spawned if this process has initialised
    CUDA, which a forked child cannot use."""
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    context = torch.multiprocessing.start_processes(
        function, args=(2, _free_port(), *args), nprocs=2, join=False, start_method=method
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # a rank waiting forever for the other is a failure, not a hang
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish within 120 s")


def _diverging_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    try:
        _tiny_training(out, poison_step=_TINY_LOOP.steps_per_epoch)  # the last step before the epoch's check
        outcome = "finished"
    except UserError as err:
        outcome = str(err)
    Path(out, f"rank{rank}.txt").write_text(outcome)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_exactly_like_one_without_batchnorm(tmp_path):
    """Same global batches: gradients, prior, pseudo-label counts and evaluation all match the
    single-process run (up to float summation order), and both ranks hold the same weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _tiny_training(str(tmp_path / "one"))
        _start_two(_train_rank, str(tmp_path / "two"))
    finally:
        torch.set_num_threads(threads)
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2 and one["world_size"] == 1
    assert ranks[0]["prior"] == ranks[1]["prior"] and ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["history"] == ranks[1]["history"]
    two = ranks[0]
    last = one["history"][-1]
    assert last["mask_rate"] > 0 and last["loss_u"] > 0, "the run is too short to test the unlabeled loss"
    assert max(abs(a - b) for a, b in zip(one["prior"], two["prior"])) < 1e-5
    for mine, theirs in zip(one["history"], two["history"]):
        for key in ("loss", "loss_x", "loss_u", "prior_entropy"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), key
        for key in ("pseudo_label_counts", "mask_rate", "top1", "top5", "step"):
            assert theirs[key] == mine[key], key
    # Only rank 0 wrote the run folder; the checkpoint holds plain (non-DDP) names.
    checkpoint = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["model"]) == {"1.weight", "1.bias"} and checkpoint["epoch"] == 2


def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    """The logged loss is all-reduced before the NaN check: rank 0, whose own loss is finite, stops
    too instead of waiting for rank 1 in the next collective."""
    _start_two(_diverging_rank, str(tmp_path))
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith("the loss became") and "lower --lr" in outcomes[0]


SSL_ARGS = [
    "--dataset",
    "digits",
    "--epochs",
    "4",
    "--steps-per-epoch",
    "6",
    "--batch-size",
    "8",
    "--mu",
    "2",
    "--threshold",
    "0.2",
    "--ema-momentum",
    "0.8",
    "--prior-momentum",
    "0.9",
    "--lr",
    "0.1",
    "--device",
    "cpu",
]


def test_torchrun_ssl_ranks_agree_match_one_process_and_resume_in_one(tmp_path):
    out, dumps = tmp_path / "two", tmp_path / "dumps"
    process = subprocess.Popen(
        [*TORCHRUN, "-m", "clipdebias", "ssl", *SSL_ARGS, "--out", str(out)],
        env=_env(CLIPDEBIAS_RANK_DUMP=str(dumps)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first_epoch = [out / "metrics.jsonl", dumps / "rank-0-epoch-1.json", dumps / "rank-1-epoch-1.json"]
    deadline = time.monotonic() + 120
    while not all(path.is_file() and path.stat().st_size for path in first_epoch):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # a preempted job: torchrun stops both workers
    process.wait(timeout=60)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    stopped = checkpoint["epoch"]
    assert 1 <= stopped < 4, "the 2-process run finished before it could be stopped"

    # Every rank holds the same prior, student and EMA teacher (BatchNorm statistics included).
    records = distributed.read_rank_dumps(dumps)
    pairs = [[r for r in records if r["epoch"] == epoch] for epoch in range(1, 5)]
    pairs = [pair for pair in pairs if len(pair) == 2]  # a rank may have been stopped before its dump
    assert pairs and pairs[0][0]["epoch"] == 1
    for pair in pairs:
        assert [r["rank"] for r in pair] == [0, 1] and {r["world_size"] for r in pair} == {2}
        assert pair[0]["prior"] == pair[1]["prior"]
        assert pair[0]["teacher_digest"] == pair[1]["teacher_digest"]
        assert pair[0]["student_digest"] == pair[1]["student_digest"]
    assert checkpoint["history"][0]["prior"] == pairs[0][0]["prior"]

    # One process, the same global batches: per-GPU BatchNorm over half a batch is the only
    # difference, so the first epoch agrees closely.
    reference = tmp_path / "one"
    assert main(["ssl", *SSL_ARGS, "--out", str(reference)]) == 0
    first, expected = checkpoint["history"][0], _history(reference)[0]
    assert first["loss"] == pytest.approx(expected["loss"], rel=0.03)
    assert max(abs(a - b) for a, b in zip(first["prior"], expected["prior"])) < 1e-3
    assert abs(first["top1"] - expected["top1"]) <= 3.0

    # The 2-process checkpoint resumes in one process and finishes the run.
    assert main(["ssl", *SSL_ARGS, "--out", str(out), "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == stopped and metrics["world_size"] == 1 and metrics["steps"] == 24
    history = _history(out)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[:stopped] == checkpoint["history"]
    assert all(np.isfinite(r["loss"]) for r in history) and metrics["images_per_s"] > 0


class _Recorder:
    """A Progress that remembers its stages."""

    def __init__(self):
        self.stages = []

    def start(self, label, total, completed=0):
        self.stages.append((label, total, completed))

    def advance(self, count):
        pass

    def note(self, text, warning=False):
        pass


def _encode_rank(rank: int, world: int, port: int, folder: str, cache: str, model: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    backbone = load_backbone(BackboneConfig(model=model, pretrained="none", device="cpu"))
    recorder = _Recorder()
    with distributed.session("cpu"):
        source = open_dataset("imagefolder", "train", folder)
        result = encode_split(
            source,
            backbone,
            backbone.transform,
            backbone.transform_id,
            cache,
            data_root=folder,
            batch_size=3,
            chunk_size=4,
            progress=recorder,
        )
    summary = {"encoded": result.encoded, "path": str(result.entry.path), "stages": recorder.stages}
    Path(cache, f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_processes_encode_their_chunks_into_one_entry(tmp_path, tiny_clip):
    backbone = load_backbone(BackboneConfig(model=tiny_clip, pretrained="none", device="cpu"))
    folder = make_image_folder(tmp_path / "data", per_class=7, val_per_class=1)
    source = open_dataset("imagefolder", "train", folder)
    one = encode_split(
        source,
        backbone,
        backbone.transform,
        backbone.transform_id,
        tmp_path / "one",
        data_root=folder,
        batch_size=3,
        chunk_size=4,
    )
    _start_two(_encode_rank, str(folder), str(tmp_path / "two"), tiny_clip)
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    # 21 images in chunks of 4: rank 0 encodes chunks 0, 2, 4 (12 images), rank 1 the other 9; both
    # return the total. Only rank 0 reports progress, for its own chunks.
    assert [r["encoded"] for r in ranks] == [21, 21] and ranks[0]["path"] == ranks[1]["path"]
    assert ranks[0]["stages"] == [["encoding images", 12, 0]] and ranks[1]["stages"] == []
    two = open_entry(ranks[0]["path"])
    assert Path(two.path).name == Path(one.entry.path).name and not (two.path / "shards").exists()
    assert two.num_encoded == one.entry.num_encoded == 21
    for a, b in zip(load_embeddings(two), load_embeddings(one.entry)):
        assert np.allclose(a, b, atol=1e-6)
    assert read_manifest(two).equals(read_manifest(one.entry))


# --- precision and compilation ---------------------------------------------------------------------

TINY = [
    "--dataset",
    "digits",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "4",
    "--mu",
    "2",
    "--device",
    "cpu",
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_run_on_cpu(tmp_path, precision):
    out = tmp_path / precision
    assert main(["ssl", *TINY, "--precision", precision, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(_history(out)[0]["loss"]) and 0 <= metrics["top1"] <= 100
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for k, v in checkpoint["model"].items() if v.is_floating_point())
    assert (checkpoint["grad_scaler"] is not None) == (precision == "fp16")
    # The precision may change on resume (it changes speed, not the run).
    assert main(["ssl", *TINY, "--precision", "fp32", "--resume", "--out", str(out)]) == 0


def test_compiled_loop_saves_plain_state_dicts(tmp_path):
    train_split, val = open_dataset("digits", "train"), open_dataset("digits", "val")
    rows = np.arange(200)
    spec = StreamSpec(
        dataset="digits", batch_size=4, mu=1, views=1, seed=0, image_size=8, workers=0, eval_batch_size=64
    )
    streams = build_streams(train_split, rows[:20], rows[20:], val, np.arange(40), spec, torch.device("cpu"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    optimizer = make_sgd(model, lr=0.1, weight_decay=0.0, momentum=0.9)
    config = TrainConfig(num_classes=10, epochs=1, steps_per_epoch=2)
    run = RunFolder(tmp_path / "run")
    runtime = Runtime(compile=True, compile_backend="eager", channels_last=True)
    result = train(
        config,
        model,
        optimizer,
        cosine_schedule(optimizer, 2),
        streams.labeled,
        streams.unlabeled,
        streams.evaluate,
        run=run,
        runtime=runtime,
    )
    assert result.steps == 2 and np.isfinite(result.history[0]["loss"])
    checkpoint = run.load_checkpoint()
    assert set(checkpoint["model"]) == set(model.state_dict()) == set(checkpoint["teacher"])
    assert not any("_orig_mod" in k or k.startswith("module.") for k in checkpoint["model"])


def test_speed_options_are_checked(tmp_path, capsys):
    for args, message in (
        (["--precision", "fp8"], "--precision"),
        (["--prefetch-factor", "0"], "--prefetch-factor"),
    ):
        assert main(["ssl", *TINY, *args, "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(UserError, match="--precision"):
        Runtime(precision="half")


def test_a_one_process_checkpoint_resumes_under_torchrun_with_two(tmp_path):
    """The other direction: a run started in one process, stopped after its first checkpoint,
    finishes under ``torchrun --nproc_per_node 2`` with ``--resume``."""
    from clipdebias.commands.ssl import resolve_ssl_config, run_ssl

    out = tmp_path / "run"
    config = resolve_ssl_config(  # the values of SSL_ARGS, which the resumed run is given
        "digits", out, epochs=4, steps_per_epoch=6, batch_size=8, mu=2, threshold=0.2, ema_momentum=0.8,
        prior_momentum=0.9, lr=0.1, device="cpu",
    )  # fmt: skip
    with pytest.raises(StopTraining):
        run_ssl(config, progress=stop_after_first_epoch)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1

    done = subprocess.run(
        [*TORCHRUN, "-m", "clipdebias", "ssl", *SSL_ARGS, "--out", str(out), "--resume", "--no-report"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["world_size"] == 2 and metrics["steps"] == 24
    history = _history(out)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[:1] == checkpoint["history"]
    assert all(np.isfinite(r["loss"]) for r in history)


ZEROSHOT_TRAINING = [
    "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4", "--mu", "2", "--select-topk-per-class", "3",
    "--templates", "simple", "--logit-scale", "100", "--workers", "0", "--device", "cpu", "--no-report",
]  # fmt: skip


@pytest.mark.parametrize("student", ["head", "clip"])
def test_torchrun_zeroshot_makes_the_same_labels_once_and_trains_like_one_process(tmp_path, tiny_clip, student):
    """Under torchrun the two processes encode their parts into one cache entry, rank 0 alone makes
    and writes the pseudo-labels, and the sharded training follows the one-process run."""
    folder = make_image_folder(tmp_path / "data", per_class=8, val_per_class=3, size=32)

    def args(out: Path, cache: Path) -> list[str]:
        return [
            "zeroshot", "--dataset", "imagefolder", "--data-root", str(folder), "--model", tiny_clip,
            "--pretrained", "none", "--student", student, "--cache-dir", str(cache), "--out", str(out),
            *ZEROSHOT_TRAINING,
        ]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args(one, tmp_path / "cache-one")) == 0
    done = subprocess.run(
        [*TORCHRUN, "-m", "clipdebias", *args(two, tmp_path / "cache-two")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("student top-1") == 1  # one summary table, rank 0's
    single, double = (json.loads((out / "metrics.json").read_text()) for out in (one, two))
    assert single["world_size"] == 1 and double["world_size"] == 2

    # Rank 0's pseudo-labels from the same embeddings: the same files, written once.
    for name in ("pseudolabels.csv", "pseudolabels.json", "labeled_index.csv", "unlabeled_index.csv"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    for key in ("zeroshot_top1", "zeroshot_debiased_top1", "train_pseudo_labels", "labeled_images", "eval_images"):
        assert double[key] == single[key], key

    # The same global batches, split over two processes, gradients averaged: the same run up to
    # the order of floating-point sums.
    assert double["steps"] == single["steps"] == 6
    assert max(abs(a - b) for a, b in zip(double["prior"], single["prior"])) < 1e-4
    one_image = 100.0 / single["eval_images"]
    assert abs(double["top1"] - single["top1"]) <= one_image + 1e-9
    assert double["pseudo_labels"]["class_counts"] == single["pseudo_labels"]["class_counts"]
