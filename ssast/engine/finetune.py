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
- ``best.pt``: the best model by the validation metric (project format, with its labels,
  feature settings and ``meta``: ``multilabel``, ``task``), read by ``ssast evaluate``,
  ``ssast predict`` and :func:`ssast.load_finetuned`; ``wa.pt``: the weight average;
- ``checkpoints/``: the DeepSpeed checkpoint of the last epoch, for ``--resume``;
  ``predictions/``: each epoch's validation scores (the ensemble); ``wa/``: the weights of the
  averaged epochs.

Epochs: every process reads ``ceil(N / (micro batch x accumulation x processes))`` steps per
epoch, the epoch's clip order (a permutation, or with balanced sampling ``N`` draws with
replacement by weight) wrapped around to fill the last step, and split across the processes.
The order and the augmentation of every batch depend only on (seed, epoch, position), so a
resumed run reads and augments what an uninterrupted run would.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..augment import AugmentConfig, augment_batch
from ..config import ModelConfig
from ..datasets import AudioDataset, SkipCounter, collate, frames_to_samples
from ..features import FeatureConfig, FeatureExtractor, frame_geometry
from ..sources import Source, SourceError, read_source
from .checkpointing import Checkpointer, atomic_write_text, full_state_dict, rng_state, set_rng_state, tag_name
from .config import TrainSettings, load_deepspeed_config, precision, zero_stage
from .distributed import barrier, setup, teardown
from .finetune_objective import ClassificationObjective, average_weights, balanced_weights, finetune_lr
from .logging import RunLog
from .loop import TrainState, fit, validate
from .schedule import Plateau

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULTS = "results.csv"
BEST = "best.pt"
WA = "wa.pt"
FORMAT_VERSION = 1
METRIC_COLUMNS = ("acc", "mAP", "mAUC", "d_prime", "precision", "recall")


@dataclass
class FinetuneConfig:
    """A fine-tuning run. Defaults are the official ESC-50 recipe's optimizer and schedule."""

    out: str
    train: str
    valid: str | None = None
    test: str | None = None
    label_csv: str | None = None
    init: str = "scratch"  # a checkpoint file or pretraining run folder, "scratch", "imagenet", "audioset"
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
    """``source`` with the training label vocabulary (by id, else by display name).

    Raises SourceError naming the source and its labels that the training data does not have.
    """
    if source.labels == labels:
        return source
    index = {name: name for name in labels}
    if display_names:
        for name, disp in zip(labels, display_names):
            index.setdefault(disp, name)
    unknown = sorted({lab for it in source.items for lab in it.labels if lab not in index})
    if unknown:
        raise SourceError(source.name, f"{len(unknown)} label(s) the training data does not have: "
                                       f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    items = [type(it)(it.path, tuple(index[lab] for lab in it.labels)) for it in source.items]
    return Source(source.name, source.kind, items, list(labels), display_names)


def read_labelled(src: str, label_csv: str | None, what: str) -> Source:
    source = read_source(src, label_csv=label_csv, labeled=True)
    if not source.labeled:
        raise SourceError(src, f"the {what} set has no labels: give a folder per class, a CSV with a label column, "
                               "or a JSON datafile with its label CSV")
    return source


class _Indexed(torch.utils.data.Dataset):
    """Items of a dataset with their position and the dataset's size (for pooling across ranks)."""

    def __init__(self, dataset: AudioDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        item["index"], item["size"] = i, len(self.dataset)
        return item


def _loader(dataset, batches: list[list[int]], num_workers: int, pin: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                       pin_memory=pin, persistent_workers=False)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]) >> 1


class EpochStream:
    """Training micro-batches, epoch after epoch, from any step (see the module docstring)."""

    def __init__(self, dataset: AudioDataset, micro_batch: int, accumulation: int, world: int, rank: int, seed: int,
                 weights: torch.Tensor | None = None, num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.micro, self.accum, self.world, self.rank = dataset, micro_batch, accumulation, world, rank
        self.seed, self.weights, self.num_workers, self.pin = seed, weights, num_workers, pin_memory
        self.per_step = micro_batch * accumulation * world
        self.steps_per_epoch = max(1, math.ceil(len(dataset) / self.per_step))

    def order(self, epoch: int) -> torch.Tensor:
        """All processes' clip indices of epoch ``epoch`` (steps_per_epoch x clips per step,)."""
        n = len(self.dataset)
        g = torch.Generator().manual_seed(_seed(self.seed, epoch))
        if self.weights is None:
            idx = torch.randperm(n, generator=g)
        else:  # WeightedRandomSampler(weights, n, replacement=True)
            idx = torch.multinomial(self.weights.to(torch.float64), n, replacement=True, generator=g)
        total = self.steps_per_epoch * self.per_step
        return idx.repeat(math.ceil(total / n))[:total]

    def batches(self, step: int) -> Iterator[dict]:
        epoch, done = divmod(step, self.steps_per_epoch)
        while True:
            mine = self.order(epoch).view(-1, self.world, self.micro)[:, self.rank]  # (micro-batches, micro)
            first = done * self.accum
            self.dataset.set_epoch(epoch)  # crops of longer clips depend on (seed, epoch, index)
            loader = _loader(self.dataset, mine[first:].tolist(), self.num_workers, self.pin)
            for i, batch in enumerate(loader, start=first):
                batch["train"], batch["seed"] = True, _seed(self.seed, epoch, self.rank, i)
                yield batch
            epoch, done = epoch + 1, 0


class EvalSet:
    """A fixed labelled set, read in order from the start of each clip, split across ranks."""

    def __init__(self, dataset: AudioDataset, batch_size: int, world: int, rank: int, num_workers: int = 0,
                 pin_memory: bool = False):
        idx = list(range(rank, len(dataset), world))
        self.batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
        self.dataset, self.num_workers, self.pin = _Indexed(dataset), num_workers, pin_memory

    def __iter__(self):
        return iter(_loader(self.dataset, self.batches, self.num_workers, self.pin))


class FinetuneFeatures:
    """Waveforms -> model input; training batches are augmented (off at evaluation)."""

    def __init__(self, config: FeatureConfig, augment: AugmentConfig, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.config, self.augment, self.device, self.dtype = config, augment, device, dtype
        self.extractor = FeatureExtractor(config)
        self.min_length = frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)[0]

    def __call__(self, batch: dict) -> torch.Tensor:
        wave = batch["wave"].to(self.device, non_blocking=True)  # (B, S)
        lengths = batch["length"].to(self.device).clamp(min=self.min_length, max=wave.shape[-1])  # (B,)
        if batch.get("train") is True and self.augment.active:
            g = torch.Generator().manual_seed(batch["seed"])
            feats, target = augment_batch(wave, batch["target"].to(self.device), self.extractor, self.augment, g,
                                          lengths=lengths)
            batch["target"] = target  # mixed by mixup
        else:
            feats = self.extractor(wave, lengths=lengths)
        return feats.to(self.dtype)  # (B, T, F)

    def dummy(self, batch_size: int) -> torch.Tensor:
        c = self.config
        return torch.zeros(batch_size, c.target_length, c.num_mel_bins, device=self.device, dtype=self.dtype)


# ----------------------------------------------------------------------------- model

def build_model(cfg: FinetuneConfig, label_dim: int):
    """The model to fine-tune, initialised as ``cfg.init`` says; returns (model, description)."""
    from ..checkpoint import read_checkpoint
    from ..model import ASTModel
    from .checkpointing import export_source

    f = cfg.features
    geo = dict(fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=f.num_mel_bins, input_tdim=f.target_length,
               label_dim=label_dim, stage="finetune", default_task=cfg.task)
    if cfg.init in ("scratch", "imagenet", "audioset"):
        shape = dict(fshape=cfg.fshape or 16, tshape=cfg.tshape or 16)
        if cfg.init == "scratch":
            if cfg.model_config is not None:
                base = ModelConfig.from_dict({"model_size": "custom", **cfg.model_config, **shape, **geo})
            else:
                base = ModelConfig.from_size(cfg.model_size, **shape, **geo)
            return ASTModel(config=base), "random initialisation (scratch)"
        if cfg.model_config is not None:
            raise ValueError("--model-config applies to --init scratch only (pretrained weights fix the size)")
        size = "base384" if cfg.init == "audioset" else cfg.model_size
        model = ASTModel(label_dim, shape["fshape"], shape["tshape"], cfg.fstride, cfg.tstride, f.num_mel_bins,
                         f.target_length, model_size=size, pretrain_stage=False,
                         imagenet_pretrain=cfg.init == "imagenet", audioset_pretrain=cfg.init == "audioset")
        model.config.default_task = cfg.task
        return model, ("AST's AudioSet model" if cfg.init == "audioset" else f"ImageNet DeiT weights ({size})")
    path = Path(cfg.init)
    if not path.exists():
        raise FileNotFoundError(f"{cfg.init}: no such checkpoint or run folder (--init takes a checkpoint, a "
                                "pretraining run folder, scratch, imagenet or audioset)")
    src = export_source(path) if path.is_dir() else str(path)
    ckpt = read_checkpoint(src, fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=f.num_mel_bins)
    have = ckpt.config
    for name in ("fshape", "tshape"):
        want = getattr(cfg, name)
        if want is not None and want != getattr(have, name):
            raise ValueError(f"{src}: the checkpoint has {have.fshape}x{have.tshape} patches but --{name} {want} "
                             "was given")
    if cfg.model_config is not None:
        raise ValueError("--model-config applies to --init scratch only (the checkpoint fixes the size)")
    model = ASTModel(config=have.replace(**geo))
    model.load_from(ckpt)
    return model, f"{src} ({ckpt.format} format, {ckpt.stage} stage)"


def param_groups(model, head_lr: float, freeze_encoder: bool) -> list[dict]:
    """Adam parameter groups: the encoder (unless frozen) and ``mlp_head`` at ``head_lr`` times the rate."""
    head = [p for n, p in model.named_parameters() if n.startswith("mlp_head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("mlp_head.")]
    if freeze_encoder:
        for p in body:
            p.requires_grad_(False)
        return [{"params": head, "lr_scale": head_lr, "name": "mlp_head"}]
    return [{"params": body, "lr_scale": 1.0, "name": "encoder"},
            {"params": head, "lr_scale": head_lr, "name": "mlp_head"}]


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
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- run

def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    try:
        return _run(cfg, dist)
    finally:
        teardown()


def _run(cfg: FinetuneConfig, dist) -> int:
    import deepspeed

    run_dir = Path(cfg.out)
    train_src, valid_src, test_src, labels, names, multilabel, loss, metric = resolve(cfg)
    objective = ClassificationObjective(cfg.task, loss, multilabel, metric)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()

    ds_config = load_deepspeed_config(cfg.deepspeed_config, cfg.batch_size, dist.device.type)
    if zero_stage(ds_config) > 2:
        raise ValueError("fine-tuning runs with ZeRO stage 0, 1 or 2 (the model is small; stage 3 would need "
                         "gathered weights for the exports and the final evaluation)")
    _seed_all(cfg.seed)
    model, init_text = build_model(cfg, len(labels))
    groups = param_groups(model, cfg.head_lr, cfg.freeze_encoder)
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(ds_config), torch.float32)
    _seed_all(cfg.seed * 1000 + dist.rank)

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
    features = FinetuneFeatures(f, cfg.augment, dist.device, dtype)
    spe = stream.steps_per_epoch
    total = spe * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup else 0
    settings = TrainSettings(max_steps=total, batch_size=micro, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=tuple(cfg.betas), warmup_steps=warmup, valid_every=spe, save_every=spe,
                             keep_last=1, log_every=max(1, min(cfg.log_every, spe)), seed=cfg.seed,
                             num_workers=cfg.num_workers)

    def lr_fn(st: TrainState) -> float:
        return finetune_lr(st.step, lr=cfg.lr, steps_per_epoch=spe, total_steps=total, schedule=cfg.schedule,
                           warmup_steps=warmup, start=cfg.lr_scheduler_start, step_size=cfg.lr_scheduler_step,
                           decay=cfg.lr_decay)

    ckpt = Checkpointer(run_dir, dist.rank, 1, model.config, f.to_dict())
    found = ckpt.latest()
    if found is not None and not cfg.resume:
        raise ValueError(f"{run_dir}: holds a run (checkpoint at epoch {found[0] // spe}); pass --resume to continue "
                         "it, or choose another --out")
    state = TrainState(epoch_steps=spe, plateau=Plateau(mode="max"))
    rows: list[dict] = []
    if found is not None:
        old = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")) if (run_dir / RUN_FILE).exists() else {}
        now = cfg.to_dict()
        diffs = [k for k in ("train", "valid", "init", "features", "augment", "epochs", "batch_size", "lr", "task")
                 if k in old and old[k] != now[k]]
        if diffs:
            raise ValueError(f"{run_dir}: cannot resume with different settings ({', '.join(diffs)}); use the run's "
                             "own settings or another --out")
        if dist.main:
            ckpt.remove_incomplete()
        barrier()
        found = ckpt.latest()
        client, rank_state = ckpt.load(engine, found[1])
        state = TrainState.from_dict(client["state"])
        rows = client["rows"]
        if rank_state is not None:
            set_rng_state(rank_state["rng"])

    meta_base = {"source": "ssast finetune", "multilabel": multilabel, "task": cfg.task, "loss": loss,
                 "metric": metric, "init": cfg.init, "activation": "sigmoid" if multilabel else "softmax"}
    header = results_header(metric)
    runlog = RunLog(run_dir, dist.main, total, start_step=state.step, progress=cfg.progress, desc="finetune")
    try:
        if dist.main:
            atomic_write_text(run_dir / RUN_FILE, json.dumps(cfg.to_dict(), indent=1))
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
            from ..checkpoint import save_checkpoint

            m = ckpt.model(weights)
            save_checkpoint(m, path, features=f.to_dict(), labels=labels, meta={**meta_base, **meta})

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
                from ..metrics import compute_metrics

                ens = compute_metrics(total_scores / epoch, objective.last_targets, multilabel)[metric]
            if cfg.wa and cfg.wa_start <= epoch <= wa_end:
                weights = full_state_dict(engine.module)
                if dist.main:
                    wa_dir.mkdir(exist_ok=True)
                    torch.save(weights, wa_dir / f"epoch{epoch:03d}.pt")
            row = {"split": "valid", "epoch": epoch, "step": st.step, "lr": lr_fn(TrainState(step=st.step - 1)),
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
                        valid=valid, save=save, on_best=on_best, on_valid=on_valid, lr_fn=lr_fn)

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
        from ..checkpoint import read_checkpoint

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
