"""``ssast demo``: the main job end to end on built-in data (see :mod:`ssast.demo`)."""
from __future__ import annotations

from dataclasses import fields, replace

from ..demo import DemoSize, run


def _run(args) -> int:
    size = replace(DemoSize(), **{f.name: getattr(args, f.name) for f in fields(DemoSize)
                                  if getattr(args, f.name, None) is not None})
    run(args.out, size, seed=args.seed, threads=args.num_workers)
    return 0


def register(subparsers) -> None:
    d = subparsers.add_parser(
        "demo", help="the main job end to end on built-in speech: data, shards, pretraining, fine-tuning, "
                     "prediction over a recording (CPU, a few minutes)",
        description="Generate a small keyword set with espeak-ng, write shards, pretrain a small frame model with "
                    "ssast pretrain, fine-tune it with ssast finetune, and run ssast predict over a generated "
                    "recording with keywords at known times: prints the test accuracy, the detection precision and "
                    "recall, and where the timeline picture is. Every stage is the real command.")
    d.add_argument("--out", default="demo_out", help="folder for everything the demo writes (default: demo_out)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--num-workers", type=int, default=2, help="parallel espeak-ng jobs (default 2)")
    g = d.add_argument_group("size (defaults: the full demo)")
    for f in fields(DemoSize):
        if f.name == "words":
            g.add_argument("--words", nargs="+", help=f"keywords (default: {' '.join(f.default)})")
        else:
            g.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), help=f"default {f.default}")
    d.set_defaults(func=_run)
