"""The process group of a run: set up under any launcher, or alone.

``torchrun``, the ``deepspeed`` launcher and ``srun`` (through torchrun) export ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; DeepSpeed joins the group
they describe. A process started without a launcher gets a group of one (gloo on CPU, NCCL on a
GPU) on a free local port, so the same engine code runs everywhere.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

from ..device import default_device

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Dist:
    """This process's place in the run and its training device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(device: str | None = None) -> Dist:
    """Join (or make) the process group and pick this process's device.

    ``device``: ``cuda`` or ``cpu``; by default a GPU when one is visible.
    """
    kind = default_device(device).type
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {kind!r}")
    if kind == "cpu":
        # DeepSpeed picks its accelerator once, at import: CPU even where a GPU is visible.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != kind:
        raise ValueError(f"DeepSpeed runs on {get_accelerator().device_name()!r} but the run asks for {kind!r} "
                         f"(set DS_ACCELERATOR={kind} before DeepSpeed is imported)")
    if not all(v in os.environ for v in ("RANK", "WORLD_SIZE")):
        # No launcher: a group of one. LOCAL_RANK etc. as a launcher would set them.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no GPU is visible")
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return Dist(rank, world, local, dev)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (float64 on the way, so counts stay exact)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    if torch.distributed.get_backend() == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    t = values.detach().to(dev, torch.float64).clone()
    torch.distributed.all_reduce(t)
    return t.to(values.device)


def all_max(value: int) -> int:
    """Largest value of an int over all processes."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return value
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.long, device=dev)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
