"""``ssast finetune --train SRC --valid SRC [--test SRC] --out DIR --init ...``: supervised fine-tuning.

Runs as a single process (CPU or one GPU) or in every process of a ``torchrun``/``deepspeed``
launch, on the same DeepSpeed engine as ``ssast pretrain``. The official recipes' settings are
in finetune/<task>/run.sh; see finetune/README.md.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HELP = "fine-tune a classifier (SSAST, AST AudioSet, ImageNet DeiT or scratch start) on labelled audio"

STATS_CLIPS = 2000  # clips read to estimate the normalization statistics when none are given


def _model_config(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model config file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the model config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a model config is a JSON object of ModelConfig fields")
    geo = sorted(set(d) & {"fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim", "stage", "label_dim"})
    if geo:
        raise ValueError(f"{path}: sets {', '.join(geo)}; geometry comes from the command line")
    return d


def estimate_stats(src: str, label_csv: str | None, config, seed: int = 0, max_clips: int = STATS_CLIPS):
    """Mean and std of the training clips' fbank (up to ``max_clips`` clips drawn at random),
    counting the zero padding of short clips as the recipes' statistics do."""
    from ..audio import AudioError, load_audio
    from ..features import compute_stats
    from ..sources import read_source

    items = list(read_source(src, label_csv=label_csv, labeled=True).items)
    random.Random(seed).shuffle(items)

    def waves():
        for it in items[:max_clips]:
            try:
                yield load_audio(it.path, config.sample_rate)
            except AudioError:
                continue

    return compute_stats(waves(), config, include_padding=True)


def feature_config(a):
    from ..features import FeatureConfig

    over = {}
    if a.target_length is not None:
        over["target_length"] = a.target_length
    if a.dataset_mean is not None:
        over["mean"] = a.dataset_mean
    if a.dataset_std is not None:
        over["std"] = a.dataset_std
    base = dict(sample_rate=a.sample_rate, num_mel_bins=a.num_mel_bins)
    if a.features_preset:
        return FeatureConfig.preset(a.features_preset, **base, **over)
    cfg = FeatureConfig(**base, **over)
    if a.dataset_mean is None or a.dataset_std is None:
        stats = estimate_stats(a.train, a.label_csv, cfg, a.seed)
        print(f"ssast finetune: normalization statistics of the training clips: mean {stats.mean:.6g}, std "
              f"{stats.std:.6g} (give --dataset-mean/--dataset-std to skip this)", flush=True)
        cfg = FeatureConfig(**{**cfg.to_dict(), "mean": a.dataset_mean if a.dataset_mean is not None else stats.mean,
                               "std": a.dataset_std if a.dataset_std is not None else stats.std})
    return cfg


def build_config(a):
    """The run's :class:`ssast.engine.finetune.FinetuneConfig` from the parsed arguments."""
    from ..augment import AUGMENT_PRESETS, AugmentConfig
    from ..engine.finetune import FinetuneConfig

    aug = AUGMENT_PRESETS[a.features_preset].to_dict() if a.features_preset else AugmentConfig().to_dict()
    for k in ("freqm", "timem", "mixup", "noise"):
        if getattr(a, k) is not None:
            aug[k] = getattr(a, k)
    return FinetuneConfig(
        out=a.out, train=a.train, valid=a.valid, test=a.test, label_csv=a.label_csv, init=a.init,
        model_size=a.model_size, model_config=_model_config(a.model_config), fshape=a.fshape, tshape=a.tshape,
        fstride=a.fstride, tstride=a.tstride, task=a.task, features=feature_config(a), augment=AugmentConfig(**aug),
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, head_lr=a.head_lr, weight_decay=a.weight_decay,
        betas=tuple(a.betas), warmup=a.warmup, warmup_steps=a.warmup_steps, schedule=a.lr_scheduler,
        lr_scheduler_start=a.lr_scheduler_start, lr_scheduler_step=a.lr_scheduler_step, lr_decay=a.lr_decay,
        freeze_encoder=a.freeze_encoder, loss=a.loss, metric=a.metric, multilabel=a.multilabel,
        balanced_sampling=a.balanced_sampling, wa=a.wa, wa_start=a.wa_start, wa_end=a.wa_end, seed=a.seed,
        num_workers=a.num_workers, log_every=a.log_every, resume=a.resume, deepspeed_config=a.deepspeed_config,
        device=a.device, progress=a.progress)


def _run(a) -> int:
    from ..engine.finetune import finetune

    return finetune(build_config(a))


def register(subparsers) -> None:
    B = argparse.BooleanOptionalAction
    p = subparsers.add_parser(
        "finetune", help=HELP,
        description=HELP + ". Writes DIR/results.csv (one row per epoch, test metrics last) and DIR/best.pt. "
        "Defaults are the official ESC-50 recipe; see finetune/README.md for the others.")
    g = p.add_argument_group("data (SRC: a folder per class, a CSV with a label column, or a JSON datafile)")
    g.add_argument("--train", required=True, metavar="SRC")
    g.add_argument("--valid", required=True, metavar="SRC", help="picks the best epoch")
    g.add_argument("--test", metavar="SRC", help="evaluated once with the best model (and the weight average)")
    g.add_argument("--label-csv", help="label CSV (index,mid,display_name) of JSON datafiles (default: "
                                       "class_labels_indices.csv beside them)")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--resume", action="store_true", help="continue the run in DIR from its last epoch")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process (default 4)")
    g.add_argument("--balanced-sampling", action=B, default=False,
                   help="draw clips with weights from label frequencies (official AudioSet full-set 'bal')")

    g = p.add_argument_group("initialisation and model")
    g.add_argument("--init", required=True, metavar="CHECKPOINT|scratch|imagenet|audioset",
                   help="an SSAST checkpoint (released or project format) or ssast pretrain run folder; scratch; "
                        "imagenet (DeiT weights in SSAST_PRETRAINED_DIR); audioset (AST's AudioSet model)")
    g.add_argument("--model-size", default="base", choices=("tiny", "small", "base", "base_nokd"),
                   help="for scratch and imagenet (default base); a checkpoint gives its own")
    g.add_argument("--model-config", metavar="JSON", help="a custom encoder size for scratch (ModelConfig fields)")
    g.add_argument("--fshape", type=int, help="patch height (default: the checkpoint's, else 16)")
    g.add_argument("--tshape", type=int, help="patch width (default: the checkpoint's, else 16)")
    g.add_argument("--fstride", type=int, default=10, help="default 10 (frame models: 128)")
    g.add_argument("--tstride", type=int, default=10, help="default 10 (frame models: 1)")
    g.add_argument("--task", choices=("ft_avgtok", "ft_cls"), default="ft_avgtok",
                   help="mean of the patch tokens (default) or the prefix token(s)")
    g.add_argument("--freeze-encoder", action=B, default=False, help="linear probing: train mlp_head only")

    g = p.add_argument_group("features and augmentation")
    g.add_argument("--features-preset", choices=("esc50", "speechcommands", "audioset"),
                   help="the official recipe's mean, std, target length and augmentation")
    g.add_argument("--dataset-mean", type=float, help="default: the preset's, else computed from the training clips")
    g.add_argument("--dataset-std", type=float)
    g.add_argument("--target-length", type=int, help="frames per clip (default: the preset's, else 1024)")
    g.add_argument("--num-mel-bins", type=int, default=128)
    g.add_argument("--sample-rate", type=int, default=16000)
    g.add_argument("--freqm", type=int, help="SpecAugment frequency mask width (default: preset's, else 0)")
    g.add_argument("--timem", type=int, help="SpecAugment time mask width (default: preset's, else 0)")
    g.add_argument("--mixup", type=float, help="mixup rate (default: preset's, else 0)")
    g.add_argument("--noise", action=B, default=None, help="noise and time shift (default: preset's, else off)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--batch-size", type=int, default=48, help="micro batch per process (default 48)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--head-lr", type=float, default=1.0, help="mlp_head learning-rate multiplier (ESC-50: 10)")
    g.add_argument("--weight-decay", type=float, default=5e-7)
    g.add_argument("--betas", type=float, nargs=2, default=(0.95, 0.999), metavar=("B1", "B2"))
    g.add_argument("--warmup", action=B, default=False, help="linear warm-up over --warmup-steps (default off)")
    g.add_argument("--warmup-steps", type=int, default=1000)
    g.add_argument("--lr-scheduler", choices=("step", "cosine"), default="step")
    g.add_argument("--lr-scheduler-start", type=int, default=5, help="step schedule: first decayed epoch - 1")
    g.add_argument("--lr-scheduler-step", type=int, default=1, help="step schedule: epochs between decays")
    g.add_argument("--lr-decay", type=float, default=0.85, help="step schedule: factor per decay")
    g.add_argument("--loss", choices=("auto", "ce", "bce"), default="auto",
                   help="auto: ce for single-label data, bce for multi-label")
    g.add_argument("--metric", choices=("acc", "mAP"), help="picks the best epoch (default: acc single-label, "
                                                             "mAP multi-label)")
    g.add_argument("--multilabel", action=B, default=None, help="default: from the data")
    g.add_argument("--wa", action=B, default=False, help="average the weights of epochs --wa-start..--wa-end")
    g.add_argument("--wa-start", type=int, default=1)
    g.add_argument("--wa-end", type=int, help="default: the last epoch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines")

    g = p.add_argument_group("engine")
    g.add_argument("--deepspeed-config", metavar="JSON", help="DeepSpeed engine settings (see pretrain/*.json)")
    g.add_argument("--device", choices=("cuda", "cpu"))
    g.add_argument("--progress", action=B, default=True)
    p.set_defaults(func=_run)
