"""torchrun / DistributedDataParallel plumbing: one code path for one CPU process or N GPUs.

The engine never calls ``.cuda()``: the device comes from ``--device`` and, under ``torchrun``, from
``LOCAL_RANK``. Without the torchrun environment variables (``WORLD_SIZE`` unset or 1) everything here
is a no-op and the run is an ordinary single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedEnv",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup_distributed",
    "init_distributed",
    "unwrap_model",
]


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes (1 for a single process).
        local_rank: rank on this machine (selects the GPU ``cuda:<local_rank>``).
        device: the ``torch.device`` this process trains on.
        backend: ``"gloo"`` (CPU), ``"nccl"`` (CUDA) or ``None`` (single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints summaries."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when the run has more than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}: expected an int, got {value!r}") from err


def init_distributed(device: str | torch.device = "cpu", *, backend: str | None = None) -> DistributedEnv:
    """Read the ``torchrun`` environment and initialise the default process group if needed.

    ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` are read from the environment (``torchrun`` sets them,
    together with ``MASTER_ADDR``/``MASTER_PORT``). With ``WORLD_SIZE`` unset or 1 no process group is
    created. The backend defaults to ``"nccl"`` for CUDA and ``"gloo"`` otherwise. For ``device="cuda"``
    each process uses ``cuda:<LOCAL_RANK>``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (single process only) or a ``torch.device``.
        backend: override the process-group backend.

    Returns:
        A :class:`DistributedEnv`.

    Raises:
        ValueError: for a malformed environment variable, ``RANK`` outside ``[0, WORLD_SIZE)``, or a
            CUDA device with a distributed run but no visible GPU for ``LOCAL_RANK``.

    Example:
        >>> env = init_distributed("cpu")     # outside torchrun
        >>> env.world_size, env.rank, env.is_main
        (1, 0, True)
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK={rank}, "
                         f"WORLD_SIZE={world_size}")
    dev = torch.device(device)
    if dev.type == "cuda" and world_size > 1:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK: {local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                             "are visible")
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistributedEnv(rank=0, world_size=1, local_rank=0, device=dev, backend=None)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Destroy the default process group, if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Synchronise all ranks (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place and return it (identity for a single process).

    gloo cannot reduce CUDA tensors of every dtype and NCCL cannot reduce CPU tensors, so the tensor is
    moved to the process group's device for the reduction and copied back.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    buf = tensor.to(comm_device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    tensor.copy_(buf.to(tensor.device))
    return tensor


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank (no-op for one process).

    DDP broadcasts buffers only at the start of a wrapped forward; passes made on the unwrapped module
    (the teacher CAM passes in train mode) update each rank's statistics locally. The engine calls this
    before evaluating and checkpointing so that every rank evaluates the weights the checkpoint holds.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buf in module.buffers():
        comm = buf if dist.get_backend() == "nccl" or buf.device.type == "cpu" else buf.cpu()
        dist.broadcast(comm, src)
        if comm is not buf:
            buf.copy_(comm)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers.

    Training steps call the wrapper for gradient-carrying forwards (so DDP can synchronise gradients)
    and the unwrapped module for attributes and helper methods (``stride``, ``cam``, ``fit_input``).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_model(net) is net
        True
    """
    seen = 0
    while seen < 8:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            break
        seen += 1
    return model
