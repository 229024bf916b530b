"""``ssast demo``: a small end-to-end job on built-in data."""
from __future__ import annotations

from ..demo import run


def _run(args) -> int:
    run(args.out, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, seed=args.seed)
    return 0


def register(subparsers) -> None:
    d = subparsers.add_parser("demo", help="pretrain and fine-tune a tiny model on generated spectrograms (CPU, < 1 min)")
    d.add_argument("--out", default="demo_out", help="folder for the checkpoints (default: demo_out)")
    d.add_argument("--pretrain-steps", type=int, default=30)
    d.add_argument("--finetune-steps", type=int, default=150)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_run)
