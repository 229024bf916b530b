"""The process group of a run: set up under any launcher, or alone.

``torchrun``, the ``deepspeed`` launcher and ``srun`` (through torchrun) export ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; DeepSpeed joins the group
they describe. A process started without a launcher gets a group of one (gloo on CPU, NCCL on a
GPU) on a free local port, so the same engine code runs everywhere.

A rank started by a launcher dies with it (:func:`die_with_parent`): ``torchrun`` starts its
ranks in sessions of their own, so killing the launcher's process group (Ctrl-C in a terminal
that lost its job, a scheduler's kill) would otherwise leave them training.

Before DeepSpeed starts on a CPU it builds its shared-memory communication op (the first time,
in the torch extensions cache); a start killed during that build leaves the build's lock file,
on which every later start would wait silently. :func:`check_build_locks` removes such a lock
when no process holds it, and says what a start waits on when one does.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..device import default_device

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PR_SET_PDEATHSIG = 1  # prctl(2)
log = logging.getLogger(__name__)


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


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent (the launcher) dies (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not tie this rank to its launcher (prctl: %s)", os.strerror(ctypes.get_errno()))
    elif os.getppid() != parent:  # the launcher died before the call
        os._exit(1)


def _holders(path: Path) -> list[int]:
    """Pids of the processes that have ``path`` open (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to look at
            continue
    return pids


def extension_root() -> Path:
    """Where torch builds its C++ extensions: ``$TORCH_EXTENSIONS_DIR``, else ~/.cache/torch_extensions."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def check_build_locks(root: Path | None = None, name: str = "deepspeed_") -> list[str]:
    """Remove extension build locks that no process holds; say which ones a start will wait on.

    Returns the messages (also logged): for each lock of a build of ``name*`` under the torch
    extensions cache, either that it was stale and removed, or which process holds it.
    """
    root = root or extension_root()
    if not Path("/proc").is_dir():
        return []
    messages = []
    for lock in sorted(root.glob(f"*/{name}*/lock")) + sorted(root.glob(f"{name}*/lock")):
        holders = _holders(lock.resolve())
        if holders:
            msg = (f"waiting for {lock}: process {', '.join(map(str, holders))} is building DeepSpeed's "
                   f"{lock.parent.name} op (the first start on a machine does, about a minute)")
        else:
            try:
                lock.unlink()
            except FileNotFoundError:  # its build just finished
                continue
            msg = (f"removed {lock}: a stale build lock, left by a start that was killed while it built "
                   f"DeepSpeed's {lock.parent.name} op; the op is built again")
        log.warning(msg)
        print(f"ssast: {msg}", file=sys.stderr, flush=True)
        messages.append(msg)
    return messages


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
    if all(v in os.environ for v in ("RANK", "WORLD_SIZE")):
        die_with_parent()  # started by a launcher
    else:
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
        if local == 0:
            check_build_locks()
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
