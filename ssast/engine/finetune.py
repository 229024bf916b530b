"""Supervised fine-tuning on the DeepSpeed engine: epochs, metrics per epoch, best model, test.

:func:`finetune` is what ``ssast finetune`` runs in every process of a launch (``torchrun``,
``deepspeed``) or in a single process. It reads the labelled sources, builds the model from its
initialisation (an SSAST checkpoint or run folder, AST's AudioSet model, ImageNet DeiT weights,
or scratch), an Adam optimizer whose ``mlp_head`` group runs at ``head_lr`` times the rate, and
trains with :func:`ssast.engine.loop.fit`, one validation per epoch. The run folder ``DIR``
gets:

- ``results.csv``: a header row, one ``valid`` row per epoch (learning rate, training loss,
  validation loss and metrics, the cumulative checkpoint-ensemble metric of the AST recipe),
  then the ``test`` row of the best model (and ``wa_valid``/``wa_test`` rows of the weight
  average when it is on); ``tensorboard/``, ``train.log``, ``metrics.jsonl``;
- ``best.pt``: the best model by the validation metric (project format, with its label names
  (display names; the ids in ``meta["label_ids"]``), feature settings and ``meta``:
  ``multilabel``, ``task``), read by :func:`ssast.load` and every command that takes a model;
  ``wa.pt``: the weight average;
- ``checkpoints/``: the DeepSpeed checkpoint of the last epoch, for ``--resume``;
  ``predictions/``: each epoch's validation scores (the ensemble); ``wa/``: the weights of the
  averaged epochs.

Epochs are read as :class:`ssast.engine.data.EpochStream` describes: a resumed run reads and
augments what an uninterrupted run would.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import loading
from ..augment import AugmentConfig
from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import ModelConfig
from ..datasets import AudioDataset, SkipCounter, frames_to_samples
from ..device import compile_encoder
from ..features import FeatureConfig
from ..files import atomic_write
from ..metrics import compute_metrics
from ..model import ASTModel
from ..sources import Source, SourceError, match_labels, read_source
from .checkpointing import Checkpointer, full_state_dict, rng_state, tag_name
from .config import TrainSettings, load_deepspeed_config, zero_stage
from .data import DeviceFeatures, EpochStream, EvalSet
from .distributed import barrier, setup, teardown
from .finetune_objective import ClassificationObjective, average_weights, balanced_weights
from .logging import RunLog
from .loop import TrainState, fit, validate
from .schedule import finetune_lr
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

RESULTS = "results.csv"
BEST = loading.BEST_MODEL
WA = "wa.pt"
FORMAT_VERSION = 1
METRIC_COLUMNS = ("acc", "mAP", "mAUC", "d_prime", "precision", "recall")
# Settings that must not change when a run is resumed.
FIXED_ON_RESUME = ("train", "valid", "init", "features", "augment", "epochs", "batch_size", "lr", "task")


@dataclass
class FinetuneConfig:
    """A fine-tuning run. Defaults are the official ESC-50 recipe's optimizer and schedule."""

    out: str
    train: str
    valid: str | None = None
    test: str | None = None
    label_csv: str | None = None
    init: str = "scratch"  # anything ssast.load takes (checkpoint, run folder), "scratch", "imagenet", "audioset"
    model_size: str = "base"
    model_config: dict | None = None  # encoder size fields (scratch only), instead of model_size
    fshape: int | None = None  # None: the checkpoint's, else 16
    tshape: int | None = None
    fstride: int = 10
    tstride: int = 10
    task: str = "ft_avgtok"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 50
    batch_size: int = 48
    lr: float = 1e-4
    head_lr: float = 1.0
    layer_decay: float = 1.0
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    warmup: bool = False
    warmup_steps: int = 1000
    schedule: str = "step"
    lr_scheduler_start: int = 5
    lr_scheduler_step: int = 1
    lr_decay: float = 0.85
    freeze_encoder: bool = False
    loss: str = "auto"
    metric: str | None = None
    multilabel: bool | None = None
    balanced_sampling: bool = False
    wa: bool = False
    wa_start: int = 1
    wa_end: int | None = None
    seed: int = 0
    num_workers: int = 4
    log_every: int = 50
    resume: bool = False
    deepspeed_config: str | None = None
    precision: str | None = None  # None: the DeepSpeed JSON's, else bf16 on a GPU that has it, fp32 on CPU
    compile: bool = False  # torch.compile the encoder's blocks (ssast.device.compile_encoder)
    device: str | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"], d["augment"], d["betas"] = self.features.to_dict(), self.augment.to_dict(), list(self.betas)
        d["version"] = FORMAT_VERSION
        return d


# ----------------------------------------------------------------------------- data

def is_multilabel(source: Source) -> bool:
    """Multi-label data: some clip has no label or several."""
    return any(len(it.labels) != 1 for it in source.items)


def conform(source: Source, labels: list[str], display_names: list[str] | None) -> Source:
    """``source`` with the training label vocabulary (matched by id or display name).

    Raises SourceError naming the source and its labels that the training data does not have.
    """
    if source.labels == labels:
        return source
    pos = match_labels(source, labels, display_names, what="the training data")
    index = {lab: labels[p] for lab, p in zip(source.labels, pos)}
    items = [type(it)(it.path, tuple(index[lab] for lab in it.labels)) for it in source.items]
    return Source(source.name, source.kind, items, list(labels), display_names)


def read_labelled(src: str, label_csv: str | None, what: str) -> Source:
    source = read_source(src, label_csv=label_csv, labeled=True)
    if not source.labeled:
        raise SourceError(src, f"the {what} set has no labels: give a folder per class, a CSV with a label column, "
                               "or a JSON datafile with its label CSV")
    return source


# ----------------------------------------------------------------------------- model

def build_model(cfg: FinetuneConfig, label_dim: int) -> tuple[ASTModel, str]:
    """The model to fine-tune, initialised as ``cfg.init`` says; returns (model, description)."""
    f = cfg.features
    geo = dict(fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=f.num_mel_bins, input_tdim=f.target_length,
               label_dim=label_dim, stage="finetune", default_task=cfg.task)
    if cfg.init in ("scratch", "imagenet", "audioset"):
        shape = dict(fshape=cfg.fshape or 16, tshape=cfg.tshape or 16)
        if cfg.model_config is not None and cfg.init != "scratch":
            raise ValueError("--model-config applies to --init scratch only (pretrained weights fix the size)")
        if cfg.model_config is not None:
            config = ModelConfig.from_dict({"model_size": "custom", **cfg.model_config, **shape, **geo})
        else:
            config = ModelConfig.from_size("base384" if cfg.init == "audioset" else cfg.model_size, **shape, **geo)
        model = ASTModel(config=config)
        if cfg.init == "scratch":
            return model, "random initialisation (scratch)"
        return model, loading.initialize(model, imagenet=cfg.init == "imagenet", audioset=cfg.init == "audioset")
    if cfg.model_config is not None:
        raise ValueError("--model-config applies to --init scratch only (the checkpoint fixes the size)")
    ckpt = loading.read(cfg.init)
    have = ckpt.config
    for name in ("fshape", "tshape"):
        want = getattr(cfg, name)
        if want is not None and want != getattr(have, name):
            raise ValueError(f"{ckpt.path}: the checkpoint has {have.fshape}x{have.tshape} patches but --{name} {want} "
                             "was given")
    model = ASTModel(config=have.replace(**geo))
    return model, loading.initialize(model, ckpt)


def encoder_layer(name: str, depth: int) -> int:
    """Depth of an encoder parameter for layer-wise rate decay: 0 for the patch projection, the
    prefix tokens and the positional embedding, i + 1 for block i, depth + 1 for the final norm."""
    m = re.match(r"v\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1 if name.startswith("v.norm.") else 0


def param_groups(model, head_lr: float, freeze_encoder: bool, layer_decay: float = 1.0) -> list[dict]:
    """Adam parameter groups: the encoder (unless frozen) and ``mlp_head`` at ``head_lr`` times the rate.

    With ``layer_decay`` < 1 (layer-wise rate decay, as in BEiT and MAE fine-tuning), the encoder
    is one group per depth, layer ``l`` of ``L + 1`` at ``layer_decay ** (L + 1 - l)`` times the
    rate: the layers nearest the input, which a pretrained model has learnt best, move least.
    """
    head = [p for n, p in model.named_parameters() if n.startswith("mlp_head.")]
    body = [(n, p) for n, p in model.named_parameters() if not n.startswith("mlp_head.")]
    head_group = {"params": head, "lr_scale": head_lr, "name": "mlp_head"}
    if freeze_encoder:
        for _, p in body:
            p.requires_grad_(False)
        return [head_group]
    if layer_decay == 1.0:
        return [{"params": [p for _, p in body], "lr_scale": 1.0, "name": "encoder"}, head_group]
    if not 0.0 < layer_decay < 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {layer_decay}")
    depth = model.config.depth
    by_layer: dict[int, list] = {}
    for n, p in body:
        by_layer.setdefault(encoder_layer(n, depth), []).append(p)
    return [{"params": by_layer[k], "lr_scale": layer_decay ** (depth + 1 - k), "name": f"encoder.{k}"}
            for k in sorted(by_layer)] + [head_group]


# ----------------------------------------------------------------------------- results

def results_header(metric: str) -> list[str]:
    return (["split", "epoch", "step", "lr", "train_loss", "loss"] + list(METRIC_COLUMNS)
            + [f"ensemble_{metric}", "best"])


def write_results(path: Path, header: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue(), durable=True)


# ----------------------------------------------------------------------------- run

def resolve(cfg: FinetuneConfig):
    """Sources with one label vocabulary, and the run's multi-label, loss and metric choices."""
    train = read_labelled(cfg.train, cfg.label_csv, "training")
    labels, names = list(train.labels), train.display_names
    valid = conform(read_labelled(cfg.valid, cfg.label_csv, "validation"), labels, names) if cfg.valid else None
    test = conform(read_labelled(cfg.test, cfg.label_csv, "test"), labels, names) if cfg.test else None
    multilabel = is_multilabel(train) if cfg.multilabel is None else cfg.multilabel
    loss = cfg.loss if cfg.loss != "auto" else ("bce" if multilabel else "ce")
    metric = cfg.metric or ("mAP" if multilabel else "acc")
    return train, valid, test, labels, names, multilabel, loss, metric


def finetune(cfg: FinetuneConfig) -> int:
    """Run (or resume) fine-tuning in this process; every process of the launch calls it."""
    if cfg.valid is None:
        raise ValueError("fine-tuning needs a validation set (--valid); finetune/custom/run.sh splits one off")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be at least 1")
    if cfg.wa and not 1 <= cfg.wa_start <= (cfg.wa_end or cfg.epochs) <= cfg.epochs:
        raise ValueError(f"weight averaging needs 1 <= --wa-start <= --wa-end <= --epochs, got "
                         f"{cfg.wa_start}..{cfg.wa_end} of {cfg.epochs}")
    if cfg.task not in ("ft_avgtok", "ft_cls"):
        raise ValueError(f"task must be ft_avgtok or ft_cls, got {cfg.task!r}")
    dist = setup(cfg.device)
    lock = RunLock(cfg.out).acquire() if dist.main else None
    try:
        return _run(cfg, dist)
    finally:
        teardown()
        if lock is not None:
            lock.release()


def _run(cfg: FinetuneConfig, dist) -> int:
    run_dir = Path(cfg.out)
    train_src, valid_src, test_src, labels, names, multilabel, loss, metric = resolve(cfg)
    objective = ClassificationObjective(cfg.task, loss, multilabel, metric)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()

    ds_config = load_deepspeed_config(cfg.deepspeed_config, cfg.batch_size, dist.device.type, cfg.precision)
    if zero_stage(ds_config) > 2:
        raise ValueError("fine-tuning runs with ZeRO stage 0, 1 or 2 (the model is small; stage 3 would need "
                         "gathered weights for the exports and the final evaluation)")
    seed_run(cfg.seed)
    model, init_text = build_model(cfg, len(labels))
    compile_encoder(model, cfg.compile)
    groups = param_groups(model, cfg.head_lr, cfg.freeze_encoder, cfg.layer_decay)
    engine = build_engine(model, groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                          ds_config=ds_config)
    seed_rank(cfg.seed, dist.rank)

    f = cfg.features
    num_samples = frames_to_samples(f.target_length, f.sample_rate, f.frame_length_ms, f.frame_shift_ms)
    skipped = SkipCounter(name="train")
    train_ds = AudioDataset(train_src, sample_rate=f.sample_rate, num_samples=num_samples, train=True,
                            seed=cfg.seed, skipped=skipped)
    valid_ds = AudioDataset(valid_src, sample_rate=f.sample_rate, num_samples=num_samples, train=False)
    test_ds = AudioDataset(test_src, sample_rate=f.sample_rate, num_samples=num_samples, train=False) if test_src else None
    weights = balanced_weights(_targets(train_ds.items, labels)) if cfg.balanced_sampling else None
    micro = engine.train_micro_batch_size_per_gpu()
    accum = engine.gradient_accumulation_steps()
    world = engine.world_size
    pin = dist.device.type == "cuda"
    stream = EpochStream(train_ds, micro, accum, world, dist.rank, cfg.seed, weights, cfg.num_workers, pin)
    valid = EvalSet(valid_ds, micro, world, dist.rank, cfg.num_workers, pin)
    features = DeviceFeatures(f, dist.device, dtype_of(ds_config), cfg.augment)
    spe = stream.steps_per_epoch
    total = spe * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup else 0
    settings = TrainSettings(max_steps=total, batch_size=micro, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=tuple(cfg.betas), warmup_steps=warmup, valid_every=spe, save_every=spe,
                             keep_last=1, log_every=max(1, min(cfg.log_every, spe)), seed=cfg.seed,
                             num_workers=cfg.num_workers)

    def lr_fn(step: int) -> float:
        return finetune_lr(step, lr=cfg.lr, steps_per_epoch=spe, total_steps=total, schedule=cfg.schedule,
                           warmup_steps=warmup, start=cfg.lr_scheduler_start, step_size=cfg.lr_scheduler_step,
                           decay=cfg.lr_decay)

    ckpt = Checkpointer(run_dir, dist.rank, 1, model.config, f.to_dict())
    found = open_run(ckpt, cfg.resume)
    state = TrainState(epoch_steps=spe)
    rows: list[dict] = []
    if found is not None:
        check_resume(run_dir, cfg.to_dict(), FIXED_ON_RESUME)
        resumed = load_latest(ckpt, engine, dist.main)
        state = TrainState.from_dict(resumed.client["state"])
        rows = resumed.client["rows"]

    # Outputs are named by their display names (what predictions, tables and exports show); the
    # ids (AudioSet mids, class folder names) go with them in the meta.
    display = list(names) if names else list(labels)
    meta_base = {"source": "ssast finetune", "multilabel": multilabel, "task": cfg.task, "loss": loss,
                 "metric": metric, "init": cfg.init, "label_ids": list(labels)}
    header = results_header(metric)
    runlog = RunLog(run_dir, dist.main, total, start_step=state.step, progress=cfg.progress, desc="finetune")
    try:
        if dist.main:
            write_run_record(run_dir, cfg.to_dict())
        nparams = sum(p.numel() for p in model.parameters())
        ntrain = sum(p.numel() for g in groups for p in g["params"])
        runlog.info("ssast finetune: %d training clips, %d validation, %s test; %d labels, %s, loss %s, metric %s",
                    len(train_ds), len(valid_ds), len(test_ds) if test_ds else "no", len(labels),
                    "multi-label" if multilabel else "single-label", loss, metric)
        runlog.info("model: %s, %dx%d patches stride %dx%d on %d x %d input, task %s, %.2fM parameters (%.2fM "
                    "trained%s); init: %s", model.config.model_size, model.config.fshape, model.config.tshape,
                    cfg.fstride, cfg.tstride, f.num_mel_bins, f.target_length, cfg.task, nparams / 1e6, ntrain / 1e6,
                    ", encoder frozen" if cfg.freeze_encoder else "", init_text)
        runlog.info("%d epochs x %d steps of %d clips (%d process(es), micro batch %d, accumulation %d); Adam lr %g, "
                    "head x%g, %s schedule%s; augmentation %s%s", cfg.epochs, spe, micro * accum * world, world,
                    micro, accum, cfg.lr, cfg.head_lr, cfg.schedule, f", warm-up {warmup} steps" if warmup else "",
                    cfg.augment.to_dict(), "; balanced sampling" if cfg.balanced_sampling else "")
        if found is not None:
            runlog.info("resumed from %s at epoch %d", found[1], state.step // spe)

        pred_dir, wa_dir = run_dir / "predictions", run_dir / "wa"
        wa_end = cfg.wa_end or cfg.epochs

        def export(weights: dict, path: Path, meta: dict) -> None:
            save_checkpoint(ckpt.model(weights), path, features=f.to_dict(), labels=display, meta={**meta_base, **meta})

        def on_best(st: TrainState, metrics: dict) -> None:
            weights = full_state_dict(engine.module)
            if dist.main:
                export(weights, run_dir / BEST, {"epoch": st.step // spe, "step": st.step,
                                                 "valid": {k: metrics[k] for k in METRIC_COLUMNS + ("loss",)}})
            barrier()

        def on_valid(st: TrainState, metrics: dict) -> None:
            epoch = st.step // spe
            train_loss = objective.take_train_loss()
            ens = math.nan
            if dist.main:
                pred_dir.mkdir(exist_ok=True)
                np.save(pred_dir / f"valid_epoch{epoch:03d}.npy", objective.last_scores.numpy())
                total_scores = sum(torch.from_numpy(np.load(pred_dir / f"valid_epoch{e:03d}.npy"))
                                   for e in range(1, epoch + 1))
                ens = compute_metrics(total_scores / epoch, objective.last_targets, multilabel)[metric]
            if cfg.wa and cfg.wa_start <= epoch <= wa_end:
                weights = full_state_dict(engine.module)
                if dist.main:
                    wa_dir.mkdir(exist_ok=True)
                    torch.save(weights, wa_dir / f"epoch{epoch:03d}.pt")
            row = {"split": "valid", "epoch": epoch, "step": st.step, "lr": lr_fn(st.step - 1),
                   "train_loss": train_loss, **{k: metrics[k] for k in METRIC_COLUMNS + ("loss",)},
                   f"ensemble_{metric}": ens, "best": int(st.best_step == st.step)}
            rows.append(row)
            if dist.main:
                write_results(run_dir / RESULTS, header, rows)
                runlog.scalars(epoch, {k: v for k, v in row.items() if isinstance(v, float)}, "epoch")
                runlog.info("epoch %d/%d: train loss %.4f  valid %s %.4f (ensemble %.4f)%s", epoch, cfg.epochs,
                            train_loss, metric, metrics[metric], ens, "  new best" if row["best"] else "")
            barrier()

        def save(st: TrainState) -> None:
            client = {"version": FORMAT_VERSION, "state": st.to_dict(), "rows": rows, "config": cfg.to_dict()}
            ckpt.save(engine, st.step, client, {"rng": rng_state(), "step": st.step}, {**meta_base, "step": st.step})
            runlog.info("saved checkpoint %s", ckpt.dir / tag_name(st.step))

        if state.step < total:
            state = fit(engine, objective, stream, features, settings, state, rank=dist.rank, runlog=runlog,
                        lr=lr_fn, valid=valid, save=save, on_best=on_best, on_valid=on_valid)

        # Final evaluation: the best model (and the weight average) on the validation and test sets.
        rows = [r for r in rows if r["split"] == "valid"]
        best_epoch = max((r for r in rows), key=lambda r: (r[metric], -r["epoch"]))["epoch"] if rows else None
        evals = []
        if test_ds is not None:
            evals.append(("test", run_dir / BEST, EvalSet(test_ds, micro, world, dist.rank, cfg.num_workers, pin)))
        if cfg.wa:
            if dist.main:
                files = [wa_dir / f"epoch{e:03d}.pt" for e in range(cfg.wa_start, wa_end + 1)]
                avg = average_weights(torch.load(p, map_location="cpu", weights_only=True) for p in files)
                export(avg, run_dir / WA, {"epoch": f"{cfg.wa_start}-{wa_end}", "weight_average": True})
                runlog.info("averaged the weights of epochs %d..%d into %s", cfg.wa_start, wa_end, run_dir / WA)
            barrier()
            evals.append(("wa_valid", run_dir / WA, valid))
            if test_ds is not None:
                evals.append(("wa_test", run_dir / WA, EvalSet(test_ds, micro, world, dist.rank, cfg.num_workers, pin)))
        for split, path, data in evals:
            engine.module.load_state_dict(read_checkpoint(path).state, strict=True)
            metrics = validate(engine, objective, data, features, micro)
            epoch = best_epoch if split == "test" else f"{cfg.wa_start}-{wa_end}"
            rows.append({"split": split, "epoch": epoch, "step": state.step, "loss": metrics["loss"],
                         **{k: metrics[k] for k in METRIC_COLUMNS}})
            if dist.main:
                runlog.scalars(state.step, {k: float(metrics[k]) for k in METRIC_COLUMNS}, split)
                runlog.info("%s (%s): %s", split, path.name, "  ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_COLUMNS))
        if dist.main:
            write_results(run_dir / RESULTS, header, rows)
            runlog.info("results in %s; best model (epoch %s) in %s", run_dir / RESULTS, best_epoch, run_dir / BEST)
            if skipped.total:
                runlog.warning("skipped while reading the training data: %s", skipped.describe())
        barrier()
        return 0
    finally:
        runlog.close()


def _targets(items, labels: list[str]) -> torch.Tensor:
    """(N, C) multi-hot targets of the items."""
    pos = {name: i for i, name in enumerate(labels)}
    t = torch.zeros(len(items), len(labels))
    rows = [i for i, it in enumerate(items) for _ in it.labels]
    cols = [pos[lab] for it in items for lab in it.labels]
    t[rows, cols] = 1.0
    return t
