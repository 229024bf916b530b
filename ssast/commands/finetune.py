"""``ssast finetune --train SRC --valid SRC [--test SRC] --out DIR --init ...``: supervised fine-tuning.

Runs as a single process (CPU or one GPU) or in every process of a ``torchrun``/``deepspeed``
launch, on the same DeepSpeed engine as ``ssast pretrain``. The official recipes' settings are
in finetune/<task>/run.sh; see finetune/README.md.
"""
from __future__ import annotations

import random

from .. import options, presets
from ..audio import AudioError, load_audio
from ..augment import AugmentConfig
from ..engine.finetune import FinetuneConfig, finetune
from ..engine.finetune_objective import LOSSES
from ..engine.schedule import SCHEDULES
from ..evaluate import TASKS
from ..features import FeatureConfig, compute_stats
from ..sources import read_source

HELP = "fine-tune a classifier (SSAST, AST AudioSet, ImageNet DeiT or scratch start) on labelled audio"

STATS_CLIPS = 2000  # clips read to estimate the normalization statistics when none are given


def estimate_stats(src: str, label_csv: str | None, config: FeatureConfig, seed: int = 0,
                   max_clips: int = STATS_CLIPS):
    """Mean and std of the training clips' fbank (up to ``max_clips`` clips drawn at random),
    counting the zero padding of short clips as the recipes' statistics do."""
    items = list(read_source(src, label_csv=label_csv, labeled=True).items)
    random.Random(seed).shuffle(items)

    def waves():
        for it in items[:max_clips]:
            try:
                yield load_audio(it.path, config.sample_rate)
            except AudioError:
                continue

    return compute_stats(waves(), config, include_padding=True)


def feature_config(a) -> FeatureConfig:
    """``--preset`` (or AudioSet's settings) with ``--mean``/``--std``/``--target-length``; without a
    preset and without both statistics, the statistics of the training clips."""
    base = presets.get(a.preset or "audioset")
    cfg = base.features(sample_rate=a.sample_rate, num_mel_bins=a.num_mel_bins, target_length=a.target_length,
                        mean=a.mean, std=a.std)
    if a.preset is None and (a.mean is None or a.std is None):
        stats = estimate_stats(a.train, a.label_csv, cfg, a.seed)
        print(f"ssast finetune: normalization statistics of the training clips: mean {stats.mean:.6g}, std "
              f"{stats.std:.6g} (give --mean/--std to skip this)", flush=True)
        cfg = FeatureConfig(**{**cfg.to_dict(), "mean": a.mean if a.mean is not None else stats.mean,
                               "std": a.std if a.std is not None else stats.std})
    return cfg


def build_config(a) -> FinetuneConfig:
    """The run's :class:`ssast.engine.finetune.FinetuneConfig` from the parsed arguments."""
    aug = (presets.get(a.preset).augment if a.preset else AugmentConfig()).to_dict()
    for k in ("freqm", "timem", "mixup", "noise"):
        if getattr(a, k) is not None:
            aug[k] = getattr(a, k)
    return FinetuneConfig(
        out=a.out, train=a.train, valid=a.valid, test=a.test, label_csv=a.label_csv, init=a.init,
        model_size=a.model_size, model_config=options.read_model_config(a.model_config), fshape=a.fshape,
        tshape=a.tshape, fstride=a.fstride, tstride=a.tstride, task=a.task, features=feature_config(a),
        augment=AugmentConfig(**aug), epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, head_lr=a.head_lr,
        layer_decay=a.layer_decay,
        weight_decay=a.weight_decay, betas=tuple(a.betas), warmup=a.warmup, warmup_steps=a.warmup_steps,
        schedule=a.lr_scheduler, lr_scheduler_start=a.lr_scheduler_start, lr_scheduler_step=a.lr_scheduler_step,
        lr_decay=a.lr_decay, freeze_encoder=a.freeze_encoder, loss=a.loss, metric=a.metric, multilabel=a.multilabel,
        balanced_sampling=a.balanced_sampling, wa=a.wa, wa_start=a.wa_start, wa_end=a.wa_end, seed=a.seed,
        num_workers=a.num_workers, log_every=a.log_every, resume=a.resume, deepspeed_config=a.deepspeed_config,
        precision=a.precision, compile=a.compile, device=a.device, progress=a.progress)


def _run(a) -> int:
    return finetune(build_config(a))


def register(subparsers) -> None:
    B = options.B
    p = subparsers.add_parser(
        "finetune", help=HELP,
        description=HELP + ". Writes DIR/results.csv (one row per epoch, test metrics last) and DIR/best.pt. "
        "Defaults are the official ESC-50 recipe; see finetune/README.md for the others.")
    g = p.add_argument_group("data (SRC: a folder per class, a CSV with a label column, or a JSON datafile)")
    g.add_argument("--train", required=True, metavar="SRC")
    g.add_argument("--valid", required=True, metavar="SRC", help="picks the best epoch")
    g.add_argument("--test", metavar="SRC", help="evaluated once with the best model (and the weight average)")
    options.add_label_csv(g, "label CSV of JSON datafiles (default: class_labels_indices.csv beside them)")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--resume", action="store_true", help="continue the run in DIR from its last epoch")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process (default 4)")
    g.add_argument("--balanced-sampling", action=B, default=False,
                   help="draw clips with weights from label frequencies (official AudioSet full-set 'bal')")

    g = p.add_argument_group("initialisation")
    g.add_argument("--init", required=True, metavar="MODEL|scratch|imagenet|audioset",
                   help="an SSAST checkpoint (released or project format) or ssast pretrain run folder; scratch; "
                        "imagenet (DeiT weights in SSAST_PRETRAINED_DIR); audioset (AST's AudioSet model)")
    g.add_argument("--task", choices=TASKS, default="ft_avgtok",
                   help="mean of the patch tokens (ft_avgtok, default) or of the prefix tokens (ft_cls). Choose "
                        "ft_cls with 16x16 patches to export to Hugging Face transformers, which has no ft_avgtok "
                        "head")
    g.add_argument("--freeze-encoder", action=B, default=False, help="linear probing: train mlp_head only")
    options.add_architecture(p, strides=True, default_shape=None)

    options.add_features(p, target_length=None,
                         stats="--preset gives an official recipe's normalization, input length and augmentation; "
                               "without it and without --mean/--std the statistics of the training clips are used")
    g = p.add_argument_group("augmentation")
    g.add_argument("--freqm", type=int, help="SpecAugment frequency mask width (default: preset's, else 0)")
    g.add_argument("--timem", type=int, help="SpecAugment time mask width (default: preset's, else 0)")
    g.add_argument("--mixup", type=float, help="mixup rate (default: preset's, else 0)")
    g.add_argument("--noise", action=B, default=None, help="noise and time shift (default: preset's, else off)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--batch-size", type=int, default=48, help="micro batch per process (default 48)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--head-lr", type=float, default=1.0, help="mlp_head learning-rate multiplier (ESC-50: 10)")
    g.add_argument("--layer-decay", type=float, default=1.0,
                   help="layer-wise rate decay: block i of L at DECAY**(L - i) times the rate (default 1: off)")
    g.add_argument("--weight-decay", type=float, default=5e-7)
    g.add_argument("--betas", type=float, nargs=2, default=(0.95, 0.999), metavar=("B1", "B2"))
    g.add_argument("--warmup", action=B, default=False, help="linear warm-up over --warmup-steps (default off)")
    g.add_argument("--warmup-steps", type=int, default=1000)
    g.add_argument("--lr-scheduler", choices=SCHEDULES, default="step")
    g.add_argument("--lr-scheduler-start", type=int, default=5, help="step schedule: first decayed epoch - 1")
    g.add_argument("--lr-scheduler-step", type=int, default=1, help="step schedule: epochs between decays")
    g.add_argument("--lr-decay", type=float, default=0.85, help="step schedule: factor per decay")
    g.add_argument("--loss", choices=("auto",) + LOSSES, default="auto",
                   help="auto: ce for single-label data, bce for multi-label")
    g.add_argument("--metric", choices=("acc", "mAP"), help="picks the best epoch (default: acc single-label, "
                                                             "mAP multi-label)")
    g.add_argument("--multilabel", action=B, default=None, help="default: from the data")
    g.add_argument("--wa", action=B, default=False, help="average the weights of epochs --wa-start..--wa-end")
    g.add_argument("--wa-start", type=int, default=1)
    g.add_argument("--wa-end", type=int, help="default: the last epoch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines")

    options.add_engine(p)
    p.set_defaults(func=_run)
