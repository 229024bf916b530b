"""What pretraining and fine-tuning set up alike: seeds, precision, optimizer and engine, resume.

A run (:func:`ssast.engine.pretrain.pretrain`, :func:`ssast.engine.finetune.finetune`) in
every process: joins the process group, takes the run folder's lock (:class:`RunLock`: one run
per folder at a time; the kernel releases it when the holder dies), refuses to train into a
folder that holds a run unless ``--resume`` is given (:func:`open_run`), checks that a resumed run keeps the settings that
define what is trained (:func:`check_resume`, against the run record ``run.json``), builds the
same initial weights on every rank (:func:`seed_run`), the optimizer and the DeepSpeed engine
(:func:`build_engine`), and loads the newest complete checkpoint (:func:`load_latest`).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import seeds
from ..files import atomic_write
from .checkpointing import Checkpointer, set_rng_state
from .config import precision
from .distributed import barrier

RUN_FILE = "run.json"
LOCK_FILE = ".ssast.lock"


class RunInUse(ValueError):
    """Another live run holds the run folder's lock; the message names it."""


class RunLock:
    """An exclusive lock on a run folder for the life of the process that takes it.

    ``flock`` on ``DIR/.ssast.lock``: the kernel releases it when the holder exits or is killed,
    so a lock is never left behind. The holder writes who it is into the file (pid, host, start,
    command) for the message a second run gets. Taken by rank 0 of a run.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                h = json.loads(holder)
                who = (f"pid {h['pid']} on {h['host']}, started {h['started']} ({h['command']})")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunInUse(f"{self.path.parent}: the run folder is in use by {who}; wait for that run to end or "
                           "stop it, or choose another --out") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_of(ds_config: dict) -> torch.dtype:
    """The dtype the engine's forward pass runs in (the DeepSpeed JSON's bf16/fp16 section)."""
    return DTYPES[precision(ds_config)]


def seed_run(seed: int) -> None:
    """The same initial weights on every rank (DeepSpeed also broadcasts rank 0's)."""
    seeds.seed_everything(seed)


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank global generators from here on (DataLoader workers, dropout)."""
    seeds.seed_everything(seeds.derive_seed(seed, "rank", rank) % 2**63)


# Devices with PyTorch's fused Adam kernel (one kernel for all parameters, the step count kept
# on the device); elsewhere the multi-tensor (foreach) implementation.
FUSED_ADAM_DEVICES = ("cuda", "cpu")


def adam(params, *, lr: float, weight_decay: float, betas) -> torch.optim.Adam:
    """torch.optim.Adam with the fused kernel where the parameters' device has one, else foreach.

    The default (per-parameter) implementation reads its step count back to the host at every
    step; the fused one neither does that nor launches a kernel per parameter.
    """
    params = list(params)
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fused = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas),
                            fused=fused or None, foreach=None if fused else True)


def build_engine(model: torch.nn.Module, params, *, lr: float, weight_decay: float, betas, ds_config: dict):
    """Adam (the recipes' optimizer: L2 weight decay, as torch.optim.Adam applies it; :func:`adam`)
    wrapped by DeepSpeed with the JSON's engine settings; the loop sets the learning rate every step.

    DeepSpeed keeps the optimizer it is given (a JSON ``optimizer`` section, which would replace
    it, is refused by :func:`ssast.engine.config.load_deepspeed_config`); ZeRO hands it its
    flattened fp32 partitions.
    """
    import deepspeed  # the engine's own import: it picks its accelerator at import (see distributed.setup)

    optimizer = adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def open_run(ckpt: Checkpointer, resume: bool, what: str = "checkpoint at step") -> tuple[int, Path] | None:
    """The newest complete checkpoint of the run folder, refusing to start over one without ``resume``."""
    found = ckpt.latest()
    if found is not None and not resume:
        raise ValueError(f"{ckpt.run_dir}: holds a run ({what} {found[0]}); pass --resume to continue it, or choose "
                         "another --out")
    return found


def check_resume(run_dir: str | Path, now: dict, fixed: Sequence[str]) -> None:
    """Refuse to resume with other values of the run record's ``fixed`` settings (those that
    define what is trained); dict-valued settings are compared field by field."""
    try:
        old = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    diffs = []
    for key in fixed:
        a, b = old.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif key in old and a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    if diffs:
        raise ValueError(f"{run_dir}: cannot resume with different settings ({'; '.join(diffs)}); use the run's own "
                         "settings or another --out")


def write_run_record(run_dir: str | Path, record: dict) -> None:
    atomic_write(Path(run_dir) / RUN_FILE, json.dumps(record, indent=1), durable=True)


@dataclass
class Resumed:
    step: int
    tag: Path
    client: dict  # the run's client state saved with the checkpoint
    rank_state_missing: bool  # this rank's generator states were not saved (another world size)
    removed: list[Path]  # incomplete checkpoints a crash left, deleted


def load_latest(ckpt: Checkpointer, engine, main: bool) -> Resumed:
    """Load the newest complete checkpoint into the engine, and this rank's generator states.

    Incomplete tags (a save cut short) are deleted first, by rank 0.
    """
    removed = ckpt.remove_incomplete() if main else []
    barrier()
    found = ckpt.latest()
    if found is None:
        raise FileNotFoundError(f"{ckpt.dir}: no complete checkpoint to resume from")
    client, rank_state = ckpt.load(engine, found[1])
    if rank_state is not None:
        set_rng_state(rank_state["rng"])
    return Resumed(found[0], found[1], client, rank_state is None, removed)
