"""``ssast pretrain --train SRC [SRC ...] --out DIR``: self-supervised pretraining on DeepSpeed.

The same command runs as a single process (CPU or one GPU) or in every process of a
``torchrun``/``deepspeed``/``srun`` launch. Defaults are the official SSAST recipe.
"""
from __future__ import annotations

from .. import options, presets
from ..engine.config import DataSettings, TrainSettings
from ..engine.objective import OBJECTIVES
from ..engine.pretrain import PretrainConfig, pretrain

HELP = "self-supervised pretraining (masked patches) on the DeepSpeed engine, resumable"


def build_config(a) -> PretrainConfig:
    """The run's :class:`ssast.engine.pretrain.PretrainConfig` from the parsed arguments."""
    preset = presets.get(a.preset or "pretrain")
    features = preset.features(sample_rate=a.sample_rate, num_mel_bins=a.num_mel_bins, mean=a.mean, std=a.std,
                               target_length=a.target_length)
    model = options.model_config(a, fshape=a.fshape, tshape=a.tshape, fstride=a.fshape, tstride=a.tshape,
                                 input_fdim=features.num_mel_bins, input_tdim=features.target_length, stage="pretrain")
    train = TrainSettings(max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                          betas=tuple(a.betas), warmup_steps=a.warmup_steps, lr_patience=a.lr_patience,
                          lr_factor=a.lr_factor, valid_every=a.valid_every, save_every=a.save_every,
                          keep_last=a.keep_last, log_every=a.log_every, seed=a.seed, num_workers=a.num_workers,
                          grad_checkpointing=a.grad_checkpointing)
    data = DataSettings(train=list(a.train), weights=a.weights, valid=a.valid, shuffle_buffer=a.shuffle_buffer,
                        valid_batch_size=a.valid_batch_size)
    return PretrainConfig(out=a.out, model=model, data=data, train=train, features=features, objective=a.objective,
                          mask_patch=a.mask_patch, cluster=a.cluster, two_pass=a.two_pass, mpg_weight=a.mpg_weight,
                          resume=a.resume, deepspeed_config=a.deepspeed_config, precision=a.precision,
                          compile=a.compile, device=a.device,
                          progress=a.progress)


def _run(a) -> int:
    return pretrain(build_config(a))


def register(subparsers) -> None:
    B = options.B
    p = subparsers.add_parser(
        "pretrain", help=HELP,
        description=HELP + ". Run it as is (one process), or under torchrun / the deepspeed launcher on any "
        "number of GPUs and nodes. Defaults are the official SSAST recipe; see pretrain/README.md.")
    g = p.add_argument_group("data")
    g.add_argument("--train", nargs="+", required=True, metavar="SRC",
                   help="training audio: shard patterns (/data/as-{000000..000999}.tar), shard folders, a mixture "
                        "JSON (ssast prep mix), a JSON datafile, a CSV or a folder of audio; several SRCs are "
                        "mixed by --weights")
    g.add_argument("--weights", nargs="+", type=float, metavar="W", help="mixing weights of the SRCs (default: equal)")
    g.add_argument("--valid", metavar="SRC", help="validation set (same forms as --train): picks the best checkpoint "
                                                  "and halves the learning rate when it stops improving")
    g.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, logs, exports")
    g.add_argument("--resume", action="store_true", help="continue the run in DIR from its newest complete checkpoint "
                                                         "(starts fresh when there is none)")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes per rank (default 4)")
    g.add_argument("--shuffle-buffer", type=int, default=1000, help="clips in the shuffle buffer (default 1000)")

    options.add_architecture(p, strides=False, default_shape=16)
    p.add_argument("--grad-checkpointing", action=B, default=False,
                   help="recompute activations in the backward pass (less memory, slower)")

    g = p.add_argument_group("objective")
    g.add_argument("--objective", choices=OBJECTIVES, default="joint",
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

    options.add_features(p, target_length=None, stats="default: AudioSet's normalization, as SSAST pretraining used "
                                                      "(-4.2677393, 4.5689974), 1024 frames")
    options.add_engine(p)
    p.set_defaults(func=_run)
