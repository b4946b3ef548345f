"""Several processes, one per GPU, started by ``torchrun``: PyTorch's own ``torch.distributed``.

``torchrun`` (``python -m torch.distributed.run``) starts the processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and the rendezvous address in their
environment. :func:`session` turns that into an initialised default process group (NCCL on CUDA,
gloo on CPU) for the length of a command and destroys it afterwards. Without torchrun (no
``WORLD_SIZE``, or 1) nothing is initialised and every helper here is the single-process identity,
so library code calls them unconditionally:

- :func:`rank`, :func:`world_size`, :func:`is_main_process` (rank 0 writes every file);
- :func:`all_reduce_sum` (metrics, counts), :func:`all_reduce_min` (the first step whose loss
  was not finite), :func:`average_buffers` (BatchNorm statistics), :func:`barrier`;
- :func:`on_main`: run a function on rank 0 only (read a checkpoint, check a run folder, finish a
  cache entry) and hand its value, or its :class:`UserError`, to every rank, so that all ranks go
  on, or stop with the same one-line error, together;
- :func:`shard_slice`: this process's part of a global batch;
- :func:`dump_rank_state`: with ``$CLIPDEBIAS_RANK_DUMP`` set, each rank writes what it holds (the
  class prior, digests of the weights) after every epoch, to check that the ranks agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clipdebias.utils.atomic import atomic_write_json
from clipdebias.utils.errors import OptionError, UserError

RANK_DUMP_ENV = "CLIPDEBIAS_RANK_DUMP"
T = TypeVar("T")


@dataclass(frozen=True)
class LaunchInfo:
    """What torchrun told this process (all zeros and ones when it was not started by torchrun)."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def launched(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError as err:
        raise UserError(f"${name} is {value!r}; torchrun sets it to a whole number") from err


def launch_info() -> LaunchInfo:
    """The rank, local rank and world sizes from torchrun's environment variables."""
    world = _env_int("WORLD_SIZE", 1)
    return LaunchInfo(
        rank=_env_int("RANK", 0),
        local_rank=_env_int("LOCAL_RANK", 0),
        world_size=world,
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world if world > 1 else 1),
    )


def is_distributed() -> bool:
    """True inside :func:`session` with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group; torchrun's ``RANK`` before one exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return launch_info().rank


def world_size() -> int:
    """The number of processes in the initialised group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes files and draws progress bars."""
    return rank() == 0


@contextlib.contextmanager
def session(device: torch.device | str) -> Iterator[LaunchInfo]:
    """Initialise the default process group from torchrun's environment for the ``with`` block.

    ``device`` is this process's device (:func:`clipdebias.utils.device.resolve_device` picks
    ``cuda:LOCAL_RANK`` under torchrun): NCCL for CUDA, gloo for CPU. Nothing happens without
    torchrun, or when a group is already initialised (an enclosing session owns it).
    """
    info = launch_info()
    if not info.launched or not dist.is_available() or dist.is_initialized():
        yield info
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield info
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors must live for the group's backend (NCCL only moves CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device);
    ``tensor`` itself when not distributed."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_min(tensor: Tensor) -> Tensor:
    """The element-wise minimum of ``tensor`` over all ranks, like :func:`all_reduce_sum`."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)


def _all_reduce(tensor: Tensor, op: Any) -> Tensor:
    if not is_distributed():
        return tensor
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, op=op)
    return work.to(tensor.device)


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the ranks.

    With per-GPU BatchNorm each rank updates its running statistics from its own part of the batch;
    averaging them after every step keeps the model, and so the EMA teacher built from it, the same
    on every rank. Integer buffers (``num_batches_tracked``) advance identically and are left alone.
    """
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).to(torch.float32) for b in buffers])
    flat = all_reduce_sum(flat) / world_size()
    for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
        buffer.copy_(part.reshape(buffer.shape))


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` when not distributed."""
    if not is_distributed():
        return value
    holder = [value if rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0, device=_collective_device())
    return holder[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` when not distributed."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def on_main(function: Callable[[], T]) -> T:
    """``function()`` run on rank 0 alone, its value handed to every rank.

    If it raises a :class:`UserError` or :class:`OptionError` on rank 0, every rank raises the same
    error, so all processes end with the same one-line message instead of the others waiting for
    rank 0 forever. Any other exception is raised on rank 0 and reported as a failure of rank 0 on
    the others.
    """
    if not is_distributed():
        return function()
    outcome: tuple[str, Any] = ("", None)
    error: BaseException | None = None
    if rank() == 0:
        try:
            outcome = ("ok", function())
        except UserError as err:
            outcome, error = ("user", str(err)), err
        except OptionError as err:
            outcome, error = ("option", (err.option, err.problem)), err
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            outcome, error = ("failed", f"{type(err).__name__}: {err}"), err
    kind, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if kind == "user":
        raise UserError(value)
    if kind == "option":
        raise OptionError(*value)
    if kind == "failed":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def shard_slice(global_size: int, shard_rank: int, shards: int) -> slice:
    """The contiguous part of a global batch of ``global_size`` rows that rank ``shard_rank`` of
    ``shards`` processes; every rank gets the same number of rows."""
    if shards < 1 or not 0 <= shard_rank < shards:
        raise ValueError(f"rank {shard_rank} is not one of {shards} processes")
    if global_size % shards:
        raise ValueError(f"a batch of {global_size} rows cannot be split evenly over {shards} processes")
    size = global_size // shards
    return slice(shard_rank * size, (shard_rank + 1) * size)


def state_digest(state: dict[str, Tensor]) -> str:
    """A SHA-256 of a state dict's names and tensor bytes (equal digests: bitwise equal weights)."""
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        digest.update(name.encode())
        digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dump_rank_state(epoch: int, make_record: Callable[[], dict[str, Any]]) -> None:
    """With ``$CLIPDEBIAS_RANK_DUMP`` set to a folder, write ``rank-<R>-epoch-<E>.json`` there.

    A debugging aid: every rank writes what it holds after an epoch (``make_record()``), so a test
    or a person can check that the ranks agree. Does nothing (not even ``make_record``) when the
    variable is unset.
    """
    folder = os.environ.get(RANK_DUMP_ENV)
    if not folder:
        return
    payload = {"rank": rank(), "world_size": world_size(), "epoch": epoch, **make_record()}
    atomic_write_json(Path(folder) / f"rank-{rank()}-epoch-{epoch}.json", payload)


def read_rank_dumps(folder: str | Path) -> list[dict[str, Any]]:
    """Every record :func:`dump_rank_state` wrote into ``folder``, ordered by epoch and rank."""
    records = [json.loads(p.read_text()) for p in Path(folder).glob("rank-*-epoch-*.json")]
    return sorted(records, key=lambda r: (r["epoch"], r["rank"]))
