"""``ssast embed CHECKPOINT SRC --out DIR``: clip-level and frame-level embeddings of audio files.

See :mod:`ssast.embed` for the windows, the pooling and the files written.
"""
from __future__ import annotations

import sys


def run(args) -> int:
    from ..embed import embed

    geometry = {k: getattr(args, k) for k in ("fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim")}
    result = embed(args.checkpoint, args.src, args.out, level=args.level, layer=args.layer, window=args.window,
                   hop=args.hop, batch_size=args.batch_size, device=args.device, label_csv=args.label_csv,
                   geometry={k: v for k, v in geometry.items() if v is not None}, progress=not args.quiet)
    n, bad = len(result["files"]), len(result["skipped"])
    print(f"{n} file(s) embedded, {bad} skipped; wrote {args.out}/index.csv"
          + (f" and {args.out}/skipped.csv" if bad else ""), file=sys.stderr)
    if not n:
        print("ssast embed: error: no file could be read", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="write clip-level and frame-level embeddings of audio files (one .npz per file)",
        description="Run the encoder of a pretraining or fine-tuned checkpoint over a folder of audio (or a "
                    "CSV or JSON datafile, or one file) in windows of the model's input length, and write per "
                    "file an .npz with the clip embeddings (mean of the patch tokens and of the prefix tokens, "
                    "per window and for the whole file) and the frame embeddings (one per time step of the "
                    "patch grid, with its time), mirroring the input folder, plus index.csv. Unreadable files "
                    "are reported and skipped.")
    p.add_argument("checkpoint", help="pretraining or fine-tuned checkpoint (project format or released file)")
    p.add_argument("src", help="folder of audio (searched recursively), an audio file, a CSV or a JSON datafile")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--level", choices=("clip", "frame", "both"), default="both",
                   help="which embeddings to write (default: both)")
    p.add_argument("--layer", type=int, default=-1,
                   help="-1: the encoder output after its final norm (default); N: the output of block N (0-based)")
    p.add_argument("--window", type=float, help="window length in seconds (default: the model's input length)")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: the window length)")
    p.add_argument("--label-csv", help="label CSV of a JSON datafile or CSV (labels are copied into index.csv)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch (default: 8)")
    p.add_argument("--device", help="device (default: cuda when available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    geo = p.add_argument_group("geometry", "strides and input size (default: the checkpoint's; non-overlapping "
                                           "patches for pretraining checkpoints)")
    for name in ("fshape", "tshape", "fstride", "tstride", "input-fdim", "input-tdim"):
        geo.add_argument(f"--{name}", type=int)
    p.set_defaults(func=run)
