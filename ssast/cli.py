"""The ``ssast`` command: one console script, one subcommand per job."""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from .demo import run

    run(args.out, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, seed=args.seed)
    return 0


def _describe(path: str) -> str:
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    c = ckpt.config
    lines = [
        f"file:        {path}",
        f"format:      {ckpt.format}",
        f"stage:       {c.stage}",
        f"model size:  {c.model_size} (width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, "
        f"{c.num_prefix_tokens} prefix token{'s' if c.num_prefix_tokens > 1 else ''})",
        f"patch:       {c.fshape}x{c.tshape}",
    ]
    if ckpt.format == "ssast" or ckpt.pretrain_input is not None:
        lines.append(f"stride:      {c.fstride}x{c.tstride}")
        lines.append(f"input:       {c.input_fdim} mel bins x {c.input_tdim} frames ({c.f_dim}x{c.t_dim} patches)")
    else:
        n = ckpt.state["v.pos_embed"].shape[1] - c.num_prefix_tokens
        lines.append(f"positions:   {n} patch positions (strides and input size are not stored in released files)")
    if c.stage == "finetune":
        lines.append(f"labels:      {c.label_dim}" + (f" ({', '.join(map(str, ckpt.labels[:8]))}"
                                                    f"{', ...' if len(ckpt.labels) > 8 else ''})" if ckpt.labels else ""))
    if ckpt.features:
        lines.append(f"features:    {ckpt.features}")
    return "\n".join(lines)


def _cmd_info(args) -> int:
    print(_describe(args.checkpoint))
    return 0


def _cmd_export(args) -> int:
    from pathlib import Path

    from .checkpoint import read_checkpoint, save_checkpoint, save_released
    from .model import ASTModel, load_finetuned

    src = args.checkpoint
    if Path(src).is_dir():
        # A pretraining run folder (its newest complete checkpoint) or one checkpoint tag of it.
        from .engine.checkpointing import export_source

        src = export_source(src)
        print(f"exporting {src}")
    ckpt = read_checkpoint(src)
    if ckpt.stage == "finetune":
        model = load_finetuned(src, fstride=args.fstride, tstride=args.tstride,
                               input_fdim=args.input_fdim, input_tdim=args.input_tdim)
    else:
        model = ASTModel(config=ckpt.config)
        model.load_from(ckpt)
    if args.format == "hf":
        from .hf import export_hf

        export_hf(model, args.out, labels=ckpt.labels, features=ckpt.features)
    elif args.format == "released":
        save_released(model, args.out)
    else:
        save_checkpoint(model, args.out, features=ckpt.features, labels=ckpt.labels, meta=ckpt.meta)
    print(f"wrote {args.out} ({args.format} format)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssast", description=__doc__.strip() if __doc__ else None)
    # The deepspeed launcher passes --local_rank before the subcommand; the rank is read from
    # the environment (LOCAL_RANK) instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="pretrain and fine-tune a tiny model on generated spectrograms (CPU, < 1 min)")
    d.add_argument("--out", default="demo_out", help="folder for the checkpoints (default: demo_out)")
    d.add_argument("--pretrain-steps", type=int, default=30)
    d.add_argument("--finetune-steps", type=int, default=150)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="describe a checkpoint (released or project format)")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    e = sub.add_parser("export", help="write a checkpoint in the released 2021 format, the project format, "
                       "or as a Hugging Face transformers model folder")
    e.add_argument("checkpoint", help="a checkpoint file, or a pretraining run folder (ssast pretrain --out DIR: its "
                                      "newest complete checkpoint) or one of its checkpoints/global_step<N> folders")
    e.add_argument("--format", choices=("released", "ssast", "hf"), required=True)
    e.add_argument("--out", required=True, help="output file (a folder for --format hf)")
    g = e.add_argument_group("geometry of released fine-tuned files (not stored in them)")
    g.add_argument("--fstride", type=int)
    g.add_argument("--tstride", type=int)
    g.add_argument("--input-fdim", type=int)
    g.add_argument("--input-tdim", type=int)
    e.set_defaults(func=_cmd_export)

    # Subcommands contributed by the modules of ssast.commands, in name order.
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"ssast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
