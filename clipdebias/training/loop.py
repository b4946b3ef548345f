"""The one training loop: FixMatch with an EMA teacher, debiased by DebiasPL when ``tau > 0``.

The loop does not know about images or CNNs. It takes a model (``inputs -> logits``), an
optimizer and a per-step LR schedule, a labeled and an unlabeled :class:`BatchStream` that yield
already-augmented tensors plus dataset indices, and an evaluation function. Each step computes the
losses and updates the class prior (:func:`clipdebias.training.step.fixmatch_step`), then takes the
SGD step, the LR schedule step and the EMA update.

An epoch is a fixed number of steps. At each epoch end the teacher is evaluated, a record is
appended to the history (``metrics.jsonl``) and a checkpoint is written; a run resumed from that
checkpoint continues exactly as if it had not stopped (the batch streams are keyed by epoch and
the RNG states, optimizer, schedule, EMA teacher and class prior are all restored).

A loss that is not finite (NaN, inf) stops the run with a :class:`UserError` naming the epoch and
the first such step. Every step's loss is checked on the device (no host synchronisation per
step); the flag is read at the next progress report (every ``log_every`` steps, and always at the
last step of an epoch). Before an epoch's checkpoint is written, the student, the EMA teacher and
the prior are also checked for non-finite values (gradients can overflow while the loss is still
finite). So nothing computed after a non-finite step is ever saved: the checkpoint on disk stays
the last epoch that was entirely finite. The steps between the bad one and the check do run (their
weights are discarded with the process).

Under ``torchrun`` (an initialised process group, :mod:`clipdebias.utils.distributed`) the student is
wrapped in ``DistributedDataParallel`` and every rank trains on its own part of each global batch
(the batch streams shard themselves). What is synchronised: gradients (DDP), BatchNorm running
statistics (averaged after every step, or ``SyncBatchNorm`` with ``Runtime.sync_batchnorm``), the
class prior's batch statistics (:class:`ClassPrior`), the loss sums and pseudo-label counts that are
logged and the first non-finite step (so every rank stops together on a NaN loss) and the evaluation
counts. So every rank holds the same student, EMA teacher and prior. Only rank 0 reports progress
and writes the checkpoint; the checkpoint holds plain (unwrapped) state dicts and no world size, so
it resumes with any number of processes. :class:`Runtime` chooses autocast precision, the memory
format and ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clipdebias.config.defaults import PRECISIONS
from clipdebias.data.batches import BatchStream, Evaluator, LabeledBatch, UnlabeledBatch
from clipdebias.debias import ClassPrior
from clipdebias.metrics import EvalResult, PseudoLabelCounter, PseudoLabelStats, entropy
from clipdebias.training.run_folder import RunFolder
from clipdebias.training.run_layout import CHECKPOINT
from clipdebias.training.step import EMATeacher, Fallback, TrainConfig, fixmatch_step, make_prior
from clipdebias.utils import distributed
from clipdebias.utils.errors import UserError

CHECKPOINT_FORMAT = 1
# TrainConfig fields added after checkpoint format 1, with the value that a checkpoint (or a run folder's
# config.json) written before them was trained with, so that it still resumes, with the same teacher.
ADDED_SETTINGS: dict[str, Any] = {"teacher_bn": "ema", "ema_warmup": False}


def debias_mode(settings: Mapping[str, Any]) -> str:
    """The debias mode that saved settings (a checkpoint's ``train_config``, a run folder's
    ``config.json``) trained with: the recorded one, ``paper`` before the mode existed, and ``none``
    for ``paper`` with ``tau == 0`` (the same step), so that the two spellings resume each other."""
    mode = str(settings.get("debias", "paper"))
    return "none" if mode == "paper" and not float(settings.get("tau") or 0.0) > 0 else mode


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """How the loop runs on its hardware; unlike :class:`TrainConfig` these may change on resume.

    ``precision``: ``fp32``, or autocast to ``bf16`` / ``fp16`` for the forward passes (fp16 adds a
    gradient scaler; the losses, the prior and the pseudo-label selection stay float32).
    ``channels_last``: NHWC memory format for the model and its 4-D inputs (faster convolutions
    with tensor cores). ``compile``: ``torch.compile`` the student's and the teacher's forward
    passes with ``compile_backend``. ``sync_batchnorm``: ``SyncBatchNorm`` under DDP (CUDA only;
    default per-GPU BatchNorm, the DebiasPL reference code's default).
    ``cudnn_benchmark``: let cuDNN pick the fastest convolution algorithms (CUDA only).
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    sync_batchnorm: bool = False
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context of the forward passes (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[self.precision])


class _ChannelsLast(nn.Module):
    """Calls ``module`` with its 4-D input in channels-last memory format."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.module(inputs)


# --- schedule ----------------------------------------------------------------------------------


def _step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()``, without torch's warning that it came before ``optimizer.step()``: with
    fp16 the gradient scaler skips the optimizer on the first steps (overflowing gradients, by
    design), and the schedule must advance all the same."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


# --- progress events --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainStart:
    start_epoch: int
    epochs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class StepProgress:
    epoch: int  # 0-based epoch being trained
    step: int  # steps done in this epoch
    loss: float
    mask_rate: float
    pseudo_label_accuracy: float | None


@dataclass(frozen=True)
class EpochEnd:
    record: dict[str, Any]


ProgressEvent = TrainStart | StepProgress | EpochEnd


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    final_eval: EvalResult
    pseudo_labels: PseudoLabelStats
    prior: list[float] | None
    steps: int
    elapsed_s: float
    resumed_from_epoch: int | None = None
    images_per_s: float | None = None  # training images (labeled + unlabeled, all ranks) per second of stepping
    world_size: int = 1


# --- checkpoint helpers -----------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Progress:
    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: EvalResult | None = None
    last_stats: PseudoLabelStats | None = None
    images: int = 0  # training images of all ranks so far
    stepping_s: float = 0.0  # time spent in the steps (data loading included, evaluation not)


def _restore(
    checkpoint: dict[str, Any],
    config: TrainConfig,
    model: nn.Module,
    teacher: EMATeacher,
    prior: ClassPrior | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> _Progress:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"the checkpoint has format {checkpoint.get('format')!r}, this clipdebias reads {CHECKPOINT_FORMAT}"
        )
    current = asdict(config)
    saved = {**ADDED_SETTINGS, **checkpoint["train_config"]}
    saved["debias"], current["debias"] = debias_mode(saved), debias_mode(current)
    changed = sorted(k for k in set(saved) | set(current) if k != "log_every" and saved.get(k) != current.get(k))
    if changed:
        raise UserError(f"cannot resume: the checkpoint was trained with other settings ({', '.join(changed)})")
    model.load_state_dict(checkpoint["model"])
    teacher.load_state_dict(checkpoint["teacher"])
    teacher.updates = int(checkpoint.get("teacher_updates", checkpoint["step"]))  # one update per step
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if prior is not None:
        prior.load_state_dict(checkpoint["prior"])
    if scaler.is_enabled() and checkpoint.get("grad_scaler"):
        scaler.load_state_dict(checkpoint["grad_scaler"])
    _set_rng_state(checkpoint["rng"])
    return _Progress(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        elapsed_s=checkpoint["elapsed_s"],
        history=list(checkpoint["history"]),
        last_eval=EvalResult(**checkpoint["last_eval"]),
        last_stats=PseudoLabelStats(**checkpoint["last_pseudo_labels"]),
        images=int(checkpoint.get("images", 0)),
        stepping_s=float(checkpoint.get("stepping_s", 0.0)),
    )


def _checkpoint(
    config: TrainConfig,
    done: _Progress,
    model: nn.Module,
    teacher: EMATeacher,
    prior: ClassPrior | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """Everything a resumed run needs; plain state dicts, nothing that depends on the world size."""
    assert done.last_eval is not None and done.last_stats is not None
    return {
        "format": CHECKPOINT_FORMAT,
        "train_config": asdict(config),
        "epoch": done.epoch,
        "step": done.step,
        "elapsed_s": done.elapsed_s,
        "images": done.images,
        "stepping_s": done.stepping_s,
        "model": model.state_dict(),
        "teacher": teacher.state_dict(),
        "teacher_updates": teacher.updates,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "prior": prior.state_dict() if prior is not None else None,
        "rng": _rng_state(),
        "history": done.history,
        "last_eval": asdict(done.last_eval),
        "last_pseudo_labels": asdict(done.last_stats),
    }


# --- the loop ---------------------------------------------------------------------------------


def _epoch_record(
    done: _Progress,
    lr: float,
    sums: Tensor,
    steps: int,
    stats: PseudoLabelStats,
    prior: ClassPrior | None,
    result: EvalResult,
) -> dict[str, Any]:
    loss, loss_x, loss_u = (v / steps for v in sums[:3].tolist())
    return {
        "epoch": done.epoch,
        "step": done.step,
        "lr": lr,
        "loss": loss,
        "loss_x": loss_x,
        "loss_u": loss_u,
        "mask_rate": stats.mask_rate,
        "pseudo_label_accuracy": stats.accuracy,
        "pseudo_label_counts": stats.class_counts,
        "imbalance_ratio": stats.imbalance_ratio,
        "prior": prior.probs.cpu().tolist() if prior is not None else None,
        "prior_entropy": entropy(prior.probs.cpu()) if prior is not None else None,
        "top1": result.top1,
        "top5": result.top5,
        "elapsed_s": done.elapsed_s,
    }


class _LossWatch:
    """The first step of an epoch whose loss was not finite, kept on the device: :meth:`add` costs
    no host synchronisation; :meth:`first_bad` (one all-reduce over the ranks) is read at log steps."""

    def __init__(self, steps_per_epoch: int, device: torch.device):
        self.none = steps_per_epoch + 1
        self.first = torch.full((), self.none, dtype=torch.long, device=device)

    def add(self, loss: Tensor, step: int) -> None:
        """``step``: the 1-based number of the step in its epoch."""
        self.first = torch.where(torch.isfinite(loss.detach()), self.first, self.first.clamp(max=step))

    def first_bad(self) -> int | None:
        value = int(distributed.all_reduce_min(self.first).item())
        return None if value == self.none else value


def _all_finite(states: list[dict[str, Any]], device: torch.device) -> bool:
    """Whether every floating-point tensor of ``states`` is finite, on every rank."""
    tensors = [t for state in states for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]
    flags = [torch.isfinite(t).all().to(device) for t in tensors]
    finite = torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)
    return distributed.all_reduce_sum((~finite).to(torch.float32).reshape(1)).item() == 0


def _not_finite_error(problem: str, done: _Progress, run: RunFolder | None, runtime: Runtime) -> UserError:
    """The one-line error of a run stopped by a non-finite loss or weights; says what was kept."""
    if run is not None and done.epoch > 0:
        kept = f"{run.file(CHECKPOINT)} keeps epoch {done.epoch}, the last good one (--resume continues from it)"
    else:
        kept = "no epoch had finished, so no checkpoint was written"
    precision = " or train in fp32 (without mixed precision)" if runtime.precision != "fp32" else ""
    return UserError(f"{problem}; training stopped and {kept}; lower --lr (in a new run){precision}")


def _global_sums(sums: Tensor) -> Tensor:
    """Loss sums averaged over the ranks (each rank's loss is already a mean over its rows), image
    counts summed."""
    total = distributed.all_reduce_sum(sums)
    return torch.cat([total[:3] / distributed.world_size(), total[3:]])


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _prepare_student(model: nn.Module, device: torch.device, runtime: Runtime) -> nn.Module:
    """Move ``model`` to ``device`` (channels-last if asked) and convert its BatchNorm to
    SyncBatchNorm when asked under DDP; returns the model to train (same parameters)."""
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if runtime.sync_batchnorm and distributed.is_distributed():
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm has no CPU version); leave it off on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel. Buffers are not broadcast from rank 0 before each
    forward pass: the loop averages them after each step (:func:`distributed.average_buffers`)."""
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync = (
        {"forward_sync_buffers": False}  # newer torch releases renamed the option
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)


def _forwards(model: nn.Module, teacher: EMATeacher, device: torch.device, runtime: Runtime) -> nn.Module:
    """The student as the step calls it (channels-last, DDP, compiled) and the teacher's forward."""
    student: nn.Module = model
    if distributed.is_distributed():
        student = _ddp(model, device)
    teacher_forward: nn.Module = teacher.module
    if runtime.channels_last:
        student, teacher_forward = _ChannelsLast(student), _ChannelsLast(teacher_forward)
    if runtime.compile:
        student = torch.compile(student, backend=runtime.compile_backend)
        teacher_forward = torch.compile(teacher_forward, backend=runtime.compile_backend)
    teacher.set_forward(teacher_forward)
    return student


def train(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    labeled: BatchStream[LabeledBatch],
    unlabeled: BatchStream[UnlabeledBatch],
    evaluate: Evaluator,
    *,
    device: torch.device | str = "cpu",
    run: RunFolder | None = None,
    resume: bool = False,
    fallback: Fallback | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.epochs`` epochs (continuing ``run``'s checkpoint if ``resume``).

    ``scheduler`` is stepped once per step (see :func:`cosine_schedule`); it and ``optimizer`` must
    be built for ``model``'s parameters (on ``device`` already, or moved there by this function).
    ``evaluate`` is called with the EMA teacher (in eval mode, under ``torch.no_grad``) at each
    epoch end. ``run`` (optional) receives the checkpoint and ``metrics.jsonl`` after every epoch.

    Under torchrun (see the module docstring) call it on every rank, with batch streams that yield
    each rank's part of the global batches and an ``evaluate`` that returns the global result (both
    as :func:`clipdebias.data.streams.build_streams` makes them); ``progress`` is only called on rank 0,
    and only rank 0 writes to ``run`` and reads its checkpoint.
    """
    runtime = runtime or Runtime()
    main_process = distributed.is_main_process()
    notify = progress if (progress is not None and main_process) else (lambda event: None)
    device = torch.device(device)
    model = _prepare_student(model, device, runtime)
    teacher = EMATeacher(model, config.ema_momentum, config.teacher_bn, config.ema_warmup)
    prior = make_prior(config)
    prior = prior.to(device) if prior is not None else None
    fallback = fallback.to(device) if fallback is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.precision == "fp16")
    done = _Progress()
    checkpoint = distributed.on_main(run.load_checkpoint) if (resume and run is not None) else None
    if checkpoint is not None:
        done = _restore(checkpoint, config, model, teacher, prior, optimizer, scheduler, scaler)
        if run is not None and main_process:  # a kill between the two writes leaves it an epoch behind
            run.write_history(done.history)
    resumed_from = done.epoch if checkpoint is not None else None
    student = _forwards(model, teacher, device, runtime)
    notify(TrainStart(done.epoch, config.epochs, config.steps_per_epoch))

    with _cudnn_benchmark(runtime.cudnn_benchmark and device.type == "cuda"):
        for epoch in range(done.epoch, config.epochs):
            started = time.perf_counter()
            model.train()
            counter = PseudoLabelCounter(config.num_classes, device)
            sums = torch.zeros(4, device=device)  # loss, loss_x, loss_u, images
            watch = _LossWatch(config.steps_per_epoch, device)
            steps = 0
            batches = zip(
                labeled.batches(epoch, config.steps_per_epoch), unlabeled.batches(epoch, config.steps_per_epoch)
            )
            for lab, unl in batches:
                with runtime.autocast(device):
                    out = fixmatch_step(student, teacher, prior, lab, unl, config, fallback)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                _step_schedule(scheduler)
                distributed.average_buffers(model)
                teacher.update(model)
                counter.add(out.targets, out.mask, unl.labels)
                images = lab.inputs.new_tensor(lab.inputs.shape[0] + unl.indices.shape[0], dtype=torch.float32)
                sums += torch.stack([out.loss.detach().float(), out.loss_x.float(), out.loss_u.float(), images])
                steps += 1
                watch.add(out.loss, steps)
                if steps % config.log_every == 0 or steps == config.steps_per_epoch:
                    epoch_sums = _global_sums(sums)
                    mean_loss = epoch_sums[0].item() / steps
                    bad_step = watch.first_bad()
                    if bad_step is not None or not np.isfinite(mean_loss):
                        where = f"epoch {epoch + 1}, step {bad_step or steps} of {config.steps_per_epoch}"
                        raise _not_finite_error(f"the loss became NaN or infinite at {where}", done, run, runtime)
                    stats = counter.result(reduce=distributed.all_reduce_sum)
                    notify(StepProgress(epoch, steps, mean_loss, stats.mask_rate, stats.accuracy))
            if steps != config.steps_per_epoch:
                raise RuntimeError(f"the batch streams gave {steps} batches, expected {config.steps_per_epoch}")
            stepped = time.perf_counter() - started
            states = [model.state_dict(), teacher.state_dict(), prior.state_dict() if prior is not None else {}]
            if not _all_finite(states, device):
                problem = f"the weights became NaN or infinite in epoch {epoch + 1} while the loss was finite"
                raise _not_finite_error(f"{problem} (exploding gradients)", done, run, runtime)
            with torch.no_grad(), runtime.autocast(device):
                result = evaluate(teacher.module.eval())
            done.epoch, done.step = epoch + 1, done.step + steps
            done.elapsed_s += time.perf_counter() - started
            done.images += int(epoch_sums[3].item())
            done.stepping_s += stepped
            done.last_eval, done.last_stats = result, stats
            record = _epoch_record(done, optimizer.param_groups[0]["lr"], epoch_sums, steps, stats, prior, result)
            done.history.append(record)
            if run is not None and main_process:
                run.save_checkpoint(_checkpoint(config, done, model, teacher, prior, optimizer, scheduler, scaler))
                run.write_history(done.history)
            distributed.dump_rank_state(
                done.epoch,
                lambda record=record: {
                    "prior": prior.probs.cpu().tolist() if prior is not None else None,
                    "teacher_digest": distributed.state_digest(teacher.state_dict()),
                    "student_digest": distributed.state_digest(model.state_dict()),
                    "record": record,
                },
            )
            notify(EpochEnd(record))

    if done.last_eval is None or done.last_stats is None:
        raise ValueError("config.epochs must be at least 1")
    return TrainResult(
        history=done.history,
        final_eval=done.last_eval,
        pseudo_labels=done.last_stats,
        prior=prior.probs.cpu().tolist() if prior is not None else None,
        steps=done.step,
        elapsed_s=done.elapsed_s,
        resumed_from_epoch=resumed_from,
        images_per_s=done.images / done.stepping_s if done.stepping_s > 0 else None,
        world_size=distributed.world_size(),
    )
