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

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..datasets import SkipCounter
from ..device import compile_encoder
from ..features import FeatureConfig
from ..files import atomic_write, json_text
from ..model import ASTModel
from .checkpointing import MODEL_FILE, RELEASED_FILE, Checkpointer, full_state_dict, rng_state, tag_name
from .config import DataSettings, TrainSettings, load_deepspeed_config, precision, zero_stage
from .data import DeviceFeatures, TrainStream, ValidSet
from .distributed import all_reduce_sum, barrier, setup, teardown
from .logging import RunLog
from .loop import TrainState, fit
from .objective import MaskedPatchObjective
from .schedule import Plateau, PlateauSchedule
from .setup import (
    RunLock,
    build_engine,
    check_resume,
    dtype_of,
    load_latest,
    open_run,
    seed_rank,
    seed_run,
    write_run_record,
)

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
    precision: str | None = None  # None: the DeepSpeed JSON's, else bf16 on a GPU that has it, fp32 on CPU
    compile: bool = False  # torch.compile the encoder's blocks (ssast.device.compile_encoder)
    device: str | None = None
    progress: bool = True

    def resolved_cluster(self) -> bool:
        if self.cluster is not None:
            return self.cluster
        # A frame model's patch spans every mel bin: clusters would only be runs of frames.
        return not self.model.is_frame_model

    def objective_dict(self) -> dict:
        return {"objective": self.objective, "mask_patch": self.mask_patch, "cluster": self.resolved_cluster(),
                "two_pass": self.two_pass, "mpg_weight": self.mpg_weight}

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "model": self.model.to_dict(), "features": self.features.to_dict(),
                "objective": self.objective_dict(), "train": self.train.to_dict(), "data": self.data.to_dict(),
                "deepspeed_config": self.deepspeed_config, "precision": self.precision, "compile": self.compile}


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
    lock = RunLock(cfg.out).acquire() if dist.main else None
    try:
        return _run(cfg, objective, dist)
    finally:
        teardown()
        if lock is not None:
            lock.release()


def _run(cfg: PretrainConfig, objective: MaskedPatchObjective, dist) -> int:
    run_dir = Path(cfg.out)
    ckpt = Checkpointer(run_dir, dist.rank, cfg.train.keep_last, cfg.model, cfg.features.to_dict())
    found = open_run(ckpt, cfg.resume)
    if found is not None:
        check_resume(run_dir, cfg.to_dict(), FIXED_ON_RESUME)
    ds_config = load_deepspeed_config(cfg.deepspeed_config, cfg.train.batch_size, dist.device.type, cfg.precision)
    t = cfg.train
    seed_run(t.seed)
    model = ASTModel(config=cfg.model)
    model.set_grad_checkpointing(t.grad_checkpointing)
    compile_encoder(model, cfg.compile)
    engine = build_engine(model, model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=t.betas,
                          ds_config=ds_config)
    seed_rank(t.seed, dist.rank)

    state = TrainState(epoch_steps=t.save_every)
    schedule = PlateauSchedule(t.lr, t.warmup_steps, Plateau(mode=objective.mode, patience=t.lr_patience,
                                                             factor=t.lr_factor))
    resumed = None
    if found is not None:
        resumed = load_latest(ckpt, engine, dist.main)
        state = TrainState.from_dict(resumed.client["state"])
        schedule.plateau = Plateau.from_dict(resumed.client["plateau"])

    runlog = RunLog(run_dir, dist.main, t.max_steps, start_step=state.step, progress=cfg.progress)
    try:
        return _train(cfg, objective, dist, engine, ckpt, state, schedule, ds_config, runlog, resumed)
    finally:
        runlog.close()


def _train(cfg, objective, dist, engine, ckpt, state, schedule, ds_config, runlog, resumed) -> int:
    t = cfg.train
    run_dir = Path(cfg.out)
    world = engine.world_size
    accum = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    nparams = sum(p.numel() for p in engine.module.parameters())
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(run_dir, cfg.to_dict())
    m = cfg.model
    runlog.info("ssast pretrain: %s model (width %d, %d blocks, %.1fM parameters), %dx%d patches on %d x %d input "
                "(%dx%d grid), objective %s%s, %d masked (%s)", m.model_size, m.embed_dim, m.depth, nparams / 1e6,
                m.fshape, m.tshape, m.input_fdim, m.input_tdim, m.f_dim, m.t_dim, cfg.objective,
                " in two passes" if cfg.two_pass else "", cfg.mask_patch,
                "clusters" if cfg.resolved_cluster() else "uniform")
    runlog.info("engine: %d process(es) on %s, ZeRO stage %d, %s%s, micro batch %d x %d accumulation x %d = %d "
                "clips per step; Adam (fused) lr %g (warm-up %d steps, halved after %d validations without progress), "
                "weight decay %g, betas %s", world, dist.device.type, zero_stage(ds_config), precision(ds_config),
                ", compiled blocks" if cfg.compile else "", micro, accum, world, micro * accum * world, t.lr,
                t.warmup_steps, t.lr_patience, t.weight_decay, tuple(t.betas))
    layout = {"world_size": world, "num_workers": t.num_workers, "micro_batch": micro, "accumulation": accum}
    if resumed is not None:
        for p in resumed.removed:
            runlog.warning("removed incomplete checkpoint %s (a save cut short)", p)
        runlog.info("resumed from %s at step %d", resumed.tag, resumed.step)
        saved = resumed.client.get("layout", {})
        changed = {k: (saved.get(k), v) for k, v in layout.items() if saved.get(k) != v}
        if changed or resumed.rank_state_missing:
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
    features = DeviceFeatures(cfg.features, dist.device, dtype_of(ds_config))

    saved = {}  # the weights of the last checkpoint, for the final export

    def save(st: TrainState) -> None:
        client = {"version": FORMAT_VERSION, "state": st.to_dict(), "plateau": schedule.plateau.to_dict(),
                  "layout": layout, "config": cfg.to_dict()}
        saved.clear()
        saved[st.step] = ckpt.save(engine, st.step, client, {"rng": rng_state(), "step": st.step}, meta())
        runlog.info("saved checkpoint %s", ckpt.dir / tag_name(st.step))

    def on_best(st: TrainState, metrics: dict) -> None:
        weights = full_state_dict(engine.module)
        if dist.main:
            best = run_dir / "best"
            ckpt.export(weights, best, meta())
            atomic_write(best / "valid.json", json_text({"step": st.step, **metrics}))
        barrier()

    def on_valid(st: TrainState, metrics: dict) -> None:
        # The plateau schedule: halve the rate when the validation metric stops improving.
        if schedule.observe(metrics[objective.metric]):
            runlog.info("learning rate halved after %d validations without progress (now x%g)",
                        schedule.plateau.patience + 1, schedule.plateau.scale)
        runlog.scalars(st.step, {"lr_scale": schedule.plateau.scale}, "schedule")

    def skip_counts() -> torch.Tensor:
        return torch.tensor(list(skipped.counts().values()), dtype=torch.float64)

    state = fit(engine, objective, stream, features, t, state, rank=dist.rank, runlog=runlog, lr=schedule,
                valid=valid, save=save, on_best=on_best, on_valid=on_valid, skip_counts=skip_counts)

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
