"""``ssast pretrain --data SRC [SRC ...] --out DIR``: self-supervised pretraining on DeepSpeed.

The same command runs as a single process (CPU or one GPU) or in every process of a
``torchrun``/``deepspeed``/``srun`` launch. Defaults are the official SSAST recipe.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "self-supervised pretraining (masked patches) on the DeepSpeed engine, resumable"

# Geometry is set by the flags; a --model-config file gives the encoder's size only.
_GEOMETRY = ("fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim", "stage")


def _model_config(a):
    from ..config import ModelConfig

    geo = dict(fshape=a.fshape, tshape=a.tshape, fstride=a.fshape, tstride=a.tshape, input_fdim=a.num_mel_bins,
               input_tdim=a.input_tdim, stage="pretrain")
    if a.model_config is None:
        return ModelConfig.from_size(a.model_size, **geo)
    try:
        d = json.loads(Path(a.model_config).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{a.model_config}: no such model config file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{a.model_config}: cannot read the model config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{a.model_config}: a model config is a JSON object of ModelConfig fields")
    given = sorted(set(d) & set(_GEOMETRY))
    if given:
        raise ValueError(f"{a.model_config}: sets {', '.join(given)}; patch shape and input size come from "
                         "--fshape/--tshape/--input-tdim/--num-mel-bins")
    try:
        return ModelConfig.from_dict({"model_size": "custom", **d, **geo})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{a.model_config}: {e}") from None


def build_config(a):
    """The run's :class:`ssast.engine.pretrain.PretrainConfig` from the parsed arguments."""
    from ..engine.config import DataSettings, TrainSettings
    from ..engine.pretrain import PretrainConfig
    from ..features import AUDIOSET_MEAN, AUDIOSET_STD, FeatureConfig

    model = _model_config(a)
    features = FeatureConfig(sample_rate=a.sample_rate, num_mel_bins=a.num_mel_bins, target_length=a.input_tdim,
                             mean=AUDIOSET_MEAN if a.mean is None else a.mean,
                             std=AUDIOSET_STD if a.std is None else a.std)
    train = TrainSettings(max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                          betas=tuple(a.betas), warmup_steps=a.warmup_steps, lr_patience=a.lr_patience,
                          lr_factor=a.lr_factor, valid_every=a.valid_every, save_every=a.save_every,
                          keep_last=a.keep_last, log_every=a.log_every, seed=a.seed, num_workers=a.num_workers,
                          grad_checkpointing=a.grad_checkpointing)
    data = DataSettings(train=list(a.data), weights=a.weights, valid=a.valid, shuffle_buffer=a.shuffle_buffer,
                        valid_batch_size=a.valid_batch_size)
    return PretrainConfig(out=a.out, model=model, data=data, train=train, features=features, objective=a.objective,
                          mask_patch=a.mask_patch, cluster=a.cluster, two_pass=a.two_pass, mpg_weight=a.mpg_weight,
                          resume=a.resume, deepspeed_config=a.deepspeed_config, device=a.device,
                          progress=a.progress)


def _run(a) -> int:
    from ..engine.pretrain import pretrain

    return pretrain(build_config(a))


def register(subparsers) -> None:
    B = argparse.BooleanOptionalAction
    p = subparsers.add_parser(
        "pretrain", help=HELP,
        description=HELP + ". Run it as is (one process), or under torchrun / the deepspeed launcher on any "
        "number of GPUs and nodes. Defaults are the official SSAST recipe; see pretrain/README.md.")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="SRC",
                   help="training audio: shard patterns (/data/as-{000000..000999}.tar), shard folders, a mixture "
                        "JSON (ssast prep mix), a JSON datafile, a CSV or a folder of audio; several SRCs are "
                        "mixed by --weights")
    g.add_argument("--weights", nargs="+", type=float, metavar="W", help="mixing weights of the SRCs (default: equal)")
    g.add_argument("--valid", metavar="SRC", help="validation set (same forms as --data): picks the best checkpoint "
                                                  "and halves the learning rate when it stops improving")
    g.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, logs, exports")
    g.add_argument("--resume", action="store_true", help="continue the run in DIR from its newest complete checkpoint "
                                                         "(starts fresh when there is none)")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes per rank (default 4)")
    g.add_argument("--shuffle-buffer", type=int, default=1000, help="clips in the shuffle buffer (default 1000)")

    g = p.add_argument_group("model")
    g.add_argument("--model-size", default="base", choices=("tiny", "small", "base", "base_nokd"),
                   help="default base")
    g.add_argument("--model-config", metavar="JSON",
                   help="a custom encoder size instead of --model-size: ModelConfig fields (embed_dim, depth, "
                        "num_heads, num_prefix_tokens, mlp_ratio)")
    g.add_argument("--fshape", type=int, default=16, help="patch height in mel bins (16: patch model; 128: frame)")
    g.add_argument("--tshape", type=int, default=16, help="patch width in frames (16: patch model; 2: frame)")
    g.add_argument("--input-tdim", type=int, default=1024, help="frames per clip (default 1024, 10.24 s)")
    g.add_argument("--grad-checkpointing", action=B, default=False,
                   help="recompute activations in the backward pass (less memory, slower)")

    g = p.add_argument_group("objective")
    g.add_argument("--objective", choices=("joint", "mpc", "mpg"), default="joint",
                   help="joint: nce + mpg-weight * mse (default); mpc: classification only; mpg: reconstruction only")
    g.add_argument("--mask-patch", type=int, default=400, help="masked patches per clip (default 400)")
    g.add_argument("--cluster", action=B, default=None,
                   help="mask square clusters of patches (default: on for patch models, off (uniform) for frame models)")
    g.add_argument("--two-pass", action=B, default=False,
                   help="the 2021 schedule: classification and reconstruction in two encoder passes with two masks "
                        "(default: one pass, one mask)")
    g.add_argument("--mpg-weight", type=float, default=10.0, help="weight of the reconstruction loss (default 10)")

    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    g.add_argument("--weight-decay", type=float, default=5e-7, help="Adam's L2 weight decay (default 5e-7)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.95, 0.999), metavar=("B1", "B2"))
    g.add_argument("--warmup-steps", type=int, default=1000, help="linear warm-up steps (default 1000)")
    g.add_argument("--lr-patience", type=int, default=2,
                   help="halve the rate after this many validations without progress (default 2)")
    g.add_argument("--lr-factor", type=float, default=0.5, help="factor of each reduction (default 0.5)")
    g.add_argument("--max-steps", type=int, required=True, help="optimizer steps of the whole run")
    g.add_argument("--batch-size", type=int, default=None,
                   help="micro batch per process (default: the DeepSpeed JSON's train_micro_batch_size_per_gpu, "
                        "else 24); clips per step = this x gradient accumulation x processes")
    g.add_argument("--valid-batch-size", type=int, default=None, help="default: --batch-size")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("intervals")
    g.add_argument("--valid-every", type=int, default=4000, help="steps between validations (default 4000)")
    g.add_argument("--save-every", type=int, default=4000,
                   help="steps between checkpoints (default 4000); also the data epoch (see pretrain/README.md)")
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints kept (default 3)")
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines (default 50)")

    g = p.add_argument_group("features")
    g.add_argument("--num-mel-bins", type=int, default=128, help="mel bins (default 128)")
    g.add_argument("--sample-rate", type=int, default=16000, help="default 16000")
    g.add_argument("--mean", type=float, default=None, help="normalization mean (default: AudioSet's, -4.2677393)")
    g.add_argument("--std", type=float, default=None, help="normalization std (default: AudioSet's, 4.5689974)")

    g = p.add_argument_group("engine")
    g.add_argument("--deepspeed-config", metavar="JSON",
                   help="DeepSpeed engine settings: ZeRO stage, bf16/fp16, gradient accumulation and clipping "
                        "(default: ZeRO 2, bf16 on GPUs that have it, fp32 on CPU); see pretrain/*.json")
    g.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible")
    g.add_argument("--progress", action=B, default=True, help="progress bar on rank 0 (default on)")
    p.set_defaults(func=_run)
