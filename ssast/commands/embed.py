"""``ssast embed MODEL SRC --out DIR``: clip-level and frame-level embeddings of audio files.

See :mod:`ssast.embed` for the windows, the pooling and the files written.
"""
from __future__ import annotations

import argparse
import sys

from .. import options
from ..embed import LEVELS, OUTPUT_KEYS, embed
from ..loading import load


def run(args) -> int:
    loaded = load(args.model, stage="finetune", **options.load_options(args))
    options.report_assumed(loaded, "embed")
    result = embed(loaded, args.src, args.out, level=args.level, layer=args.layer, window=args.window,
                   hop=args.hop, batch_size=args.batch_size, device=args.device, label_csv=args.label_csv,
                   progress=args.progress)
    n, bad = len(result["files"]), len(result["skipped"])
    print(f"{n} file(s) embedded, {bad} skipped; wrote {args.out}/index.csv"
          + (f" and {args.out}/skipped.csv" if bad else ""), file=sys.stderr)
    if not n:
        print("ssast embed: error: no file could be read", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    keys = "\n".join(f"  {k:<17} {v}" for k, v in OUTPUT_KEYS.items())
    p = subparsers.add_parser(
        "embed", help="write clip-level and frame-level embeddings of audio files (one .npz per file)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the encoder of a pretraining or fine-tuned model over a folder of audio (or a CSV or "
                    "JSON datafile, or one file) in windows of the model's input length, and write per file an "
                    ".npz mirroring the input folder, plus index.csv (path, npz, duration, windows, labels), "
                    "settings.json and skipped.csv. Unreadable files are reported and skipped.\n\n"
                    f"Arrays in each .npz (D: the model's width, W: windows, S: time steps):\n{keys}\n\n"
                    "Frame times: step k of a window starting at s seconds starts at s + k * tstride * 10 ms; "
                    "steps in the zero padding past the end of the file, and (with --hop below --window) the "
                    "steps of a window that the next window covers, are left out, so frame_times increase.")
    p.add_argument("model", help="pretraining or fine-tuned model: checkpoint (project or released format), run "
                                 "folder, or Hugging Face model folder")
    p.add_argument("src", help="folder of audio (searched recursively), an audio file, a CSV or a JSON datafile")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--level", choices=LEVELS, default="both", help="which embeddings to write (default: both)")
    p.add_argument("--layer", type=int, default=-1,
                   help="-1: the encoder output after its final norm (default); N: the output of block N (0-based)")
    p.add_argument("--window", type=float, help="window length in seconds (default: the model's input length)")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: the window length)")
    options.add_label_csv(p, "label CSV of a JSON datafile or CSV (labels are copied into index.csv)")
    options.add_model_options(p)
    r = p.add_argument_group("running")
    options.add_loading(r, 8, "windows", workers=None)
    options.add_running(r)
    p.set_defaults(func=run)
