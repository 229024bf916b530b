"""Self-supervised pretraining on the DeepSpeed engine: set up, resume, train, export.

:func:`pretrain` is what ``ssast pretrain`` runs in every process of a launch (``torchrun``,
``deepspeed``, ``srun``) or in a single process. It builds the model and a ``torch.optim.Adam``
from the run's settings, hands both to ``deepspeed.initialize`` with the engine settings of the
DeepSpeed JSON, resumes from the newest complete checkpoint when asked, trains with
:func:`ssast.engine.loop.fit` and writes ``DIR/ssast.pt`` (project format) and
``DIR/ssast_released.pth`` (released 2021 format) at the end, and ``DIR/best/`` whenever the
validation metric improves.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..features import FeatureConfig
from .checkpointing import (MODEL_FILE, RELEASED_FILE, Checkpointer, atomic_write_text, full_state_dict, rng_state,
                            set_rng_state, tag_name)
from .config import DataSettings, TrainSettings, load_deepspeed_config, precision, zero_stage
from .distributed import all_reduce_sum, barrier, setup, teardown
from .logging import RunLog
from .loop import TrainState, fit
from .objective import MaskedPatchObjective
from .schedule import Plateau

RUN_FILE = "run.json"
FORMAT_VERSION = 1
# Settings that must not change when a run is resumed: they define what is being trained.
FIXED_ON_RESUME = ("model", "features", "objective")


@dataclass
class PretrainConfig:
    """A pretraining run: model geometry, features, objective, data, optimizer/loop, engine."""

    out: str
    model: ModelConfig
    data: DataSettings
    train: TrainSettings
    features: FeatureConfig = field(default_factory=FeatureConfig)
    objective: str = "joint"
    mask_patch: int = 400
    cluster: bool | None = None  # None: square clusters for patch models, uniform for frame models
    two_pass: bool = False
    mpg_weight: float = 10.0
    resume: bool = False
    deepspeed_config: str | None = None
    device: str | None = None
    progress: bool = True

    def resolved_cluster(self) -> bool:
        if self.cluster is not None:
            return self.cluster
        # A frame model's patch spans every mel bin: clusters would only be runs of frames.
        return self.model.fshape != self.model.input_fdim

    def objective_dict(self) -> dict:
        return {"objective": self.objective, "mask_patch": self.mask_patch, "cluster": self.resolved_cluster(),
                "two_pass": self.two_pass, "mpg_weight": self.mpg_weight}

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "model": self.model.to_dict(), "features": self.features.to_dict(),
                "objective": self.objective_dict(), "train": self.train.to_dict(), "data": self.data.to_dict(),
                "deepspeed_config": self.deepspeed_config}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_resume(cfg: PretrainConfig, run_dir: Path) -> None:
    """Refuse to resume a run with a different model, features or objective."""
    path = run_dir / RUN_FILE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    new = cfg.to_dict()
    diffs = []
    for section in FIXED_ON_RESUME:
        a, b = old.get(section) or {}, new[section]
        diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        raise ValueError(f"{run_dir}: cannot resume with different settings ({'; '.join(diffs)}); "
                         "use the run's own settings or another --out")


def _meta(cfg: PretrainConfig, state: TrainState, ds_config: dict, world: int) -> dict:
    return {"source": "ssast pretrain", "step": state.step, "objective": cfg.objective_dict(),
            "train": cfg.train.to_dict(), "data": cfg.data.to_dict(), "world_size": world,
            "deepspeed": {"zero_stage": zero_stage(ds_config), "precision": precision(ds_config),
                          "gradient_accumulation_steps": int(ds_config.get("gradient_accumulation_steps", 1))},
            "valid": state.last_valid, "best": {"metric": state.best, "step": state.best_step}}


def pretrain(cfg: PretrainConfig) -> int:
    """Run (or resume) pretraining in this process; every process of the launch calls it."""
    cfg.model.validate()
    cfg.train.validate()
    if cfg.model.stage != "pretrain":
        raise ValueError("pretraining needs a pretraining-stage model config (stage='pretrain')")
    if (cfg.features.num_mel_bins, cfg.features.target_length) != (cfg.model.input_fdim, cfg.model.input_tdim):
        raise ValueError(f"features give {cfg.features.num_mel_bins} mel bins x {cfg.features.target_length} frames "
                         f"but the model takes {cfg.model.input_fdim} x {cfg.model.input_tdim}")
    objective = MaskedPatchObjective(cfg.model, cfg.objective, cfg.mask_patch, cfg.resolved_cluster(),
                                     cfg.two_pass, cfg.mpg_weight, seed=cfg.train.seed)
    dist = setup(cfg.device)
    try:
        return _run(cfg, objective, dist)
    finally:
        teardown()


def _run(cfg: PretrainConfig, objective: MaskedPatchObjective, dist) -> int:
    import deepspeed

    run_dir = Path(cfg.out)
    ckpt = Checkpointer(run_dir, dist.rank, cfg.train.keep_last, cfg.model, cfg.features.to_dict())
    found = ckpt.latest()
    if found is not None and not cfg.resume:
        raise ValueError(f"{run_dir}: holds a run (checkpoint at step {found[0]}); pass --resume to continue it, "
                         "or choose another --out")
    if found is not None:
        _check_resume(cfg, run_dir)
    ds_config = load_deepspeed_config(cfg.deepspeed_config, cfg.train.batch_size, dist.device.type)

    # The same initial weights on every rank (DeepSpeed also broadcasts rank 0's).
    _seed_all(cfg.train.seed)
    from ..model import ASTModel

    model = ASTModel(config=cfg.model)
    model.set_grad_checkpointing(cfg.train.grad_checkpointing)
    t = cfg.train
    # The 2021 recipe's optimizer (L2 weight decay, as torch.optim.Adam applies it); DeepSpeed
    # wraps it (ZeRO partitions its state) and the loop sets its learning rate every step.
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(ds_config), torch.float32)
    _seed_all(cfg.train.seed * 1000 + dist.rank)  # per-rank streams from here on

    state = TrainState(epoch_steps=t.save_every,
                       plateau=Plateau(mode=objective.mode, patience=t.lr_patience, factor=t.lr_factor))
    resumed_from = None
    if found is not None:
        gone = ckpt.remove_incomplete() if dist.main else []
        barrier()
        found = ckpt.latest()
        client, rank_state = ckpt.load(engine, found[1])
        state = TrainState.from_dict(client["state"])
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
        resumed_from = (found[0], client, rank_state is None, gone)

    runlog = RunLog(run_dir, dist.main, t.max_steps, start_step=state.step, progress=cfg.progress)
    try:
        return _train(cfg, objective, dist, engine, ckpt, state, ds_config, dtype, runlog, resumed_from)
    finally:
        runlog.close()


def _train(cfg, objective, dist, engine, ckpt, state, ds_config, dtype, runlog, resumed_from) -> int:
    from ..datasets import SkipCounter
    from .data import Features, TrainStream, ValidSet

    t = cfg.train
    run_dir = Path(cfg.out)
    world = engine.world_size
    accum = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    nparams = sum(p.numel() for p in engine.module.parameters())
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_FILE, json.dumps(cfg.to_dict(), indent=1))
    m = cfg.model
    runlog.info("ssast pretrain: %s model (width %d, %d blocks, %.1fM parameters), %dx%d patches on %d x %d input "
                "(%dx%d grid), objective %s%s, %d masked (%s)", m.model_size, m.embed_dim, m.depth, nparams / 1e6,
                m.fshape, m.tshape, m.input_fdim, m.input_tdim, m.f_dim, m.t_dim, cfg.objective,
                " in two passes" if cfg.two_pass else "", cfg.mask_patch,
                "clusters" if cfg.resolved_cluster() else "uniform")
    runlog.info("engine: %d process(es) on %s, ZeRO stage %d, %s, micro batch %d x %d accumulation x %d = %d clips "
                "per step; Adam lr %g (warm-up %d steps, halved after %d validations without progress), weight "
                "decay %g, betas %s", world, dist.device.type, zero_stage(ds_config), precision(ds_config), micro,
                accum, world, micro * accum * world, t.lr, t.warmup_steps, t.lr_patience, t.weight_decay,
                tuple(t.betas))
    if resumed_from is not None:
        step, client, no_rank_state, gone = resumed_from
        for p in gone:
            runlog.warning("removed incomplete checkpoint %s (a save cut short)", p)
        runlog.info("resumed from %s at step %d", ckpt.dir / tag_name(step), step)
        layout = client.get("layout", {})
        now = {"world_size": world, "num_workers": t.num_workers, "micro_batch": micro, "accumulation": accum}
        changed = {k: (layout.get(k), v) for k, v in now.items() if layout.get(k) != v}
        if changed or no_rank_state:
            runlog.warning("the run was saved with %s; the data stream after the resume differs from an "
                           "uninterrupted run", ", ".join(f"{k}={a} (now {b})" for k, (a, b) in changed.items())
                           or "another world size")
    if cfg.data.valid is None:
        runlog.warning("no --valid set: the learning rate is never halved and no best checkpoint is kept")

    meta = lambda: _meta(cfg, state, ds_config, world)  # noqa: E731 - the state changes as the run goes

    if state.step >= t.max_steps:
        runlog.info("the run is already at step %d (--max-steps %d): nothing to train", state.step, t.max_steps)
        if not (run_dir / RELEASED_FILE).exists() or not (run_dir / MODEL_FILE).exists():
            weights = full_state_dict(engine.module)
            if dist.main:
                paths = ckpt.export(weights, run_dir, meta())
                runlog.info("wrote %s and %s", *paths)
        return 0

    skipped = SkipCounter(name="train")
    pin = dist.device.type == "cuda"
    stream = TrainStream(cfg.data, cfg.features, micro, accum, state.epoch_steps, t.seed, t.num_workers, pin, skipped)
    valid = None
    if cfg.data.valid is not None:
        valid = ValidSet(cfg.data.valid, cfg.features, cfg.data.valid_batch_size or micro, t.num_workers, pin)
    features = Features(cfg.features, dist.device, dtype)
    layout = {"world_size": world, "num_workers": t.num_workers, "micro_batch": micro, "accumulation": accum}

    saved = {}  # the weights of the last checkpoint, for the final export

    def save(st: TrainState) -> None:
        client = {"version": FORMAT_VERSION, "state": st.to_dict(), "layout": layout, "config": cfg.to_dict()}
        saved.clear()
        saved[st.step] = ckpt.save(engine, st.step, client, {"rng": rng_state(), "step": st.step}, meta())
        runlog.info("saved checkpoint %s", ckpt.dir / tag_name(st.step))

    def on_best(st: TrainState, metrics: dict) -> None:
        weights = full_state_dict(engine.module)
        if dist.main:
            best = run_dir / "best"
            ckpt.export(weights, best, meta())
            atomic_write_text(best / "valid.json", json.dumps({"step": st.step, **metrics}, indent=1))
        barrier()

    def skip_counts() -> torch.Tensor:
        return torch.tensor(list(skipped.counts().values()), dtype=torch.float64)

    state = fit(engine, objective, stream, features, t, state, rank=dist.rank, runlog=runlog, valid=valid,
                save=save, on_best=on_best, skip_counts=skip_counts)

    weights = saved.get(state.step) or full_state_dict(engine.module)  # fit saves at the last step
    counts = all_reduce_sum(skip_counts())
    if dist.main:
        paths = ckpt.export(weights, run_dir, meta())
        runlog.info("wrote %s and %s", *paths)
        total = int(counts.sum())
        runlog.info("skipped while reading: %s", "nothing" if not total else ", ".join(
            f"{int(n)} {reason}" for reason, n in zip(SkipCounter.REASONS, counts.tolist()) if n))
        if state.best is not None:
            runlog.info("best validation %s %.4f at step %d (%s)", objective.metric, state.best, state.best_step,
                        run_dir / "best")
    barrier()
    return 0
