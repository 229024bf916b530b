"""Resumable DeepSpeed checkpoints that a crash cannot leave half-written, and model exports.

Layout of a run folder ``DIR``::

    DIR/checkpoints/global_step<N>/    one DeepSpeed checkpoint (tag) per save
        mp_rank_00_model_states.pt     DeepSpeed: module weights, client state (rank 0's)
        zero_pp_rank_<r>_...pt         DeepSpeed: each rank's ZeRO partition of the optimizer
        ssast_rank<r>.pt               each rank's random-number-generator states
        ssast.pt                       the fp32 model in the project format (for ssast export)
        ssast_complete.json            written last: the tag is complete
    DIR/checkpoints/latest             name of the newest complete tag (DeepSpeed's pointer file)

DeepSpeed's ``save_checkpoint`` writes its ``latest`` file from rank 0 as soon as rank 0's own
files are written, before the closing barrier, so other ranks may still be writing their
optimizer partitions; and it opens ``latest`` for writing in place. A run killed at that
moment would leave ``latest`` naming a tag with a truncated file, or an empty ``latest``. So
the tags are saved with ``save_latest=False``; after DeepSpeed's closing barrier (every rank
has written and closed its files) rank 0 flushes the tag's files to disk, writes the marker
``ssast_complete.json`` (to a temporary name, then renamed) and only then replaces ``latest``
the same way. A resume takes the newest tag that has the marker and ignores ``latest``; tags
without a marker are leftovers of a crash and are deleted.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_file, save_checkpoint, save_released
from ..files import atomic_write, fsync_dir
from ..model import ASTModel
from .distributed import barrier

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "ssast_complete.json"
MODEL_FILE = "ssast.pt"
RELEASED_FILE = "ssast_released.pth"
TAG_RE = re.compile(r"global_step(\d+)$")


def tag_name(step: int) -> str:
    return f"global_step{step}"


def read_marker(tag_dir: str | os.PathLike) -> dict | None:
    """The tag's completion record, or None if the tag is incomplete."""
    try:
        d = json.loads((Path(tag_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("step"), int) else None


def complete_tags(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete tag, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = TAG_RE.match(p.name)
        if m and p.is_dir() and read_marker(p) is not None:
            out.append((int(m.group(1)), p))
    return sorted(out)


def incomplete_tags(ckpt_dir: str | os.PathLike) -> list[Path]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if TAG_RE.match(p.name) and p.is_dir() and read_marker(p) is None)


def latest_complete(ckpt_dir: str | os.PathLike) -> tuple[int, Path] | None:
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def export_source(path: str | os.PathLike) -> str:
    """The project-format model file of a run folder, its ``checkpoints`` folder or one tag.

    A run folder or ``checkpoints`` folder gives its newest complete tag. Raises
    FileNotFoundError (naming the path) when there is no complete tag.
    """
    p = Path(path)
    if read_marker(p) is not None:
        tag = p
    else:
        found = latest_complete(p / CHECKPOINTS) or latest_complete(p)
        if found is None:
            if TAG_RE.match(p.name):
                raise FileNotFoundError(f"{path}: checkpoint tag is incomplete (no {MARKER}: the save was cut short)")
            raise FileNotFoundError(f"{path}: not a pretraining run folder or checkpoint tag (no complete "
                                    f"checkpoint under it)")
        tag = found[1]
    model = tag / MODEL_FILE
    if not model.is_file():
        raise FileNotFoundError(f"{tag}: checkpoint tag has no {MODEL_FILE}")
    return str(model)


# ----------------------------------------------------------------------------- random states

def rng_state() -> dict:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states, as plain data."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- weights

def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's fp32 weights on CPU, gathered from the ZeRO partitions.

    With ZeRO (and DeepSpeed's bf16/fp16 optimizers) these are the fp32 master weights, not the
    low-precision copies the forward pass uses. All ranks must call this (it communicates).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in module.named_parameters():
        full = safe_get_full_fp32_param(p)
        out[name] = (full if full is not None else p.detach()).float().cpu().clone()
    for name, b in module.named_buffers():
        out[name] = b.detach().cpu().clone()
    return out


def deepspeed_state_types() -> tuple:
    """The classes DeepSpeed pickles into its optimizer checkpoints besides tensors and containers:
    plain data (a loss scaler's settings, a ZeRO stage number, a parameter fragment's address)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


class _WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine with every ``load`` made by :func:`ssast.checkpoint.load_file`
    (``weights_only=True``): a run folder from elsewhere cannot run code when it is resumed."""

    def __init__(self, inner):
        self.inner = inner
        self.allow = deepspeed_state_types()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, path, map_location=None):
        return load_file(path, map_location=map_location, allow=self.allow)


def _load_weights_only(engine) -> None:
    """Route the engine's checkpoint reads through :class:`_WeightsOnlyLoads`.

    DeepSpeed reads every file of a checkpoint through ``engine.checkpoint_engine.load``, which
    unpickles with ``weights_only=False`` and offers no option to change that; its checkpoint
    engine is replaced by a wrapper here (tests/test_pretrain.py checks that a malicious run folder
    is refused, so a DeepSpeed that reads otherwise fails there, loudly).
    """
    inner = getattr(engine, "checkpoint_engine", None)
    if inner is None or not callable(getattr(inner, "load", None)):
        raise RuntimeError("this DeepSpeed engine reads checkpoints without a checkpoint_engine.load: ssast cannot "
                           "make it load with weights_only=True; use the DeepSpeed version setup.py pins")
    if not isinstance(inner, _WeightsOnlyLoads):
        engine.checkpoint_engine = _WeightsOnlyLoads(inner)


class Checkpointer:
    """Saves and finds the run's checkpoints, and writes its model exports (rank 0)."""

    def __init__(self, run_dir: str | os.PathLike, rank: int, keep_last: int, model_config, features: dict | None):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.rank, self.keep_last = rank, keep_last
        self.model_config, self.features = model_config, features
        self._model = None  # a CPU model for the exports, made on first use (rank 0)

    # -- saving
    def save(self, engine, step: int, client_state: dict, rank_state: dict, meta: dict) -> dict[str, torch.Tensor]:
        """Save tag ``global_step<step>``; all ranks call this. Returns the fp32 weights it holds."""
        tag = tag_name(step)
        tag_dir = self.dir / tag
        weights = full_state_dict(engine.module)  # collective
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # a leftover of a save cut short (or of an earlier run): start clean
                shutil.rmtree(tag_dir)
            tag_dir.mkdir()
        barrier()
        torch.save(rank_state, tag_dir / f"ssast_rank{self.rank:05d}.pt")
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={"ssast": client_state}, save_latest=False)
        # save_checkpoint ends with a barrier: every rank's files are written and closed.
        if self.rank == 0:
            self.write_model(weights, tag_dir / MODEL_FILE, meta={**meta, "step": step})
            for f in tag_dir.iterdir():
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(tag_dir)
            atomic_write(tag_dir / MARKER, json.dumps({"step": step, "time": time.time(),
                                                       "world_size": engine.world_size}), durable=True)
            atomic_write(self.dir / "latest", tag, durable=True)
            self.prune()
        barrier()
        return weights

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete tags; delete older ones and incomplete leftovers."""
        tags = complete_tags(self.dir)
        for _, p in tags[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        for p in incomplete_tags(self.dir):
            shutil.rmtree(p, ignore_errors=True)

    def model(self, weights: dict[str, torch.Tensor]) -> ASTModel:
        if self._model is None:
            self._model = ASTModel(config=self.model_config)
        self._model.load_state_dict(weights, strict=True)
        return self._model

    def write_model(self, weights: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict,
                    labels: list[str] | None = None) -> None:
        save_checkpoint(self.model(weights), path, features=self.features, labels=labels, meta=meta)

    def export(self, weights: dict[str, torch.Tensor], out_dir: str | os.PathLike, meta: dict) -> tuple[Path, Path]:
        """``OUT/ssast.pt`` (project format) and ``OUT/ssast_released.pth`` (released format). Rank 0."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.write_model(weights, out / MODEL_FILE, meta)
        save_released(self.model(weights), out / RELEASED_FILE)
        return out / MODEL_FILE, out / RELEASED_FILE

    # -- resuming
    def latest(self) -> tuple[int, Path] | None:
        return latest_complete(self.dir)

    def load(self, engine, tag_dir: Path) -> tuple[dict, dict | None]:
        """Load a tag into the engine; returns (client state, this rank's saved state or None)."""
        saved = (read_marker(tag_dir) or {}).get("world_size")
        if saved is not None and saved != engine.world_size and engine.zero_optimization_stage() > 0:
            raise ValueError(f"{tag_dir}: written by {saved} processes, resumed by {engine.world_size}; ZeRO "
                             f"partitions the optimizer state per process, so resume with {saved} processes")
        _load_weights_only(engine)
        path, client = engine.load_checkpoint(str(self.dir), tag=tag_dir.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=False, load_module_strict=True)
        if path is None or not client or "ssast" not in client:
            raise FileNotFoundError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
        rank_file = tag_dir / f"ssast_rank{self.rank:05d}.pt"
        rank_state = load_file(rank_file) if rank_file.is_file() else None
        return client["ssast"], rank_state

    def remove_incomplete(self) -> list[Path]:
        """Delete tags a crash left without a marker (rank 0); returns them."""
        gone = incomplete_tags(self.dir)
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone
