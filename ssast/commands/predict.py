"""``ssast predict MODEL AUDIO... --out FILE``: score recordings in sliding windows.

See :mod:`ssast.predict` for the windows, scores, detections and output formats.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .. import options, plots
from ..loading import load
from ..predict import ACTIVATIONS, FORMATS, Predictor, common_folder, infer_format, picture_names, predict, write
from ..stream import collect_inputs


def run(args) -> int:
    if not args.audio and not args.list:
        print("ssast predict: error: give audio files or folders, or --list FILE", file=sys.stderr)
        return 2
    fmt = args.format or infer_format(args.out)
    on_file = None
    if args.plot_dir:
        if importlib.util.find_spec("matplotlib") is None:
            print("ssast predict: error: --plot-dir needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
        plot_dir = Path(args.plot_dir)
        # One PNG per file at its path below the inputs' common folder, as the Raven tables are named.
        found, _ = collect_inputs(args.audio, recursive=args.recursive, list_file=args.list)
        png_names = dict(zip(found, picture_names(found, base=common_folder(found))))

        def on_file(result):
            name = png_names.get(result.path) or picture_names([result.path])[0]
            try:
                spec = plots.file_spectrogram(result.path, predictor.features)
            except Exception as e:  # the picture is optional: a file that fails here keeps its results
                print(f"no spectrogram for {result.path}: {e}", file=sys.stderr)
                spec = None
            plots.plot_timeline(result, plot_dir / name, spectrogram=spec, top=args.plot_top)

    loaded = load(args.model, label_csv=args.label_csv, **options.load_options(args))
    options.report_assumed(loaded, "predict")
    predictor = Predictor(loaded, activation=args.activation, device=args.device, bf16=args.bf16)
    result = predict(predictor, args.audio, window=args.window, hop=args.hop, threshold=args.threshold,
                     top_k=args.top_k, batch_size=args.batch_size, recursive=args.recursive, list_file=args.list,
                     merge_gap=args.merge_gap, keep_scores=bool(args.plot_dir), progress=args.progress,
                     on_file=on_file)
    written = write(result, args.out, fmt)
    n_det = sum(len(f.detections) for f in result.files)
    print(f"{len(result.files)} file(s) processed, {len(result.errors)} skipped or failed, {n_det} detection(s); "
          f"wrote {', '.join(map(str, written[:3]))}{' ...' if len(written) > 3 else ''}", file=sys.stderr)
    if not result.files:
        print("ssast predict: error: no file could be processed", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="run a fine-tuned model over recordings in sliding windows (CSV, JSON, Raven tables)",
        description="Score audio files, folders or a list of paths with a fine-tuned model, in windows of "
                    "--window seconds every --hop seconds; merge windows at or above --threshold into "
                    "detections per label; summarize each file (with AudioMoth metadata when present). "
                    "Unreadable files are reported and skipped. Exit status 0 when at least one file was "
                    "processed.")
    p.add_argument("model", help="fine-tuned model: a checkpoint (project or released format), a fine-tuning run "
                                 "folder, or a Hugging Face model folder")
    p.add_argument("audio", nargs="*", help="audio files and folders")
    p.add_argument("--out", required=True, help="output: FILE.csv, FILE.json, or a folder for Raven tables")
    p.add_argument("--format", choices=FORMATS,
                   help="output format (default: from --out: .csv, .json, or a folder for raven). csv also "
                        "writes <stem>.detections.csv and <stem>.summary.csv beside it")
    p.add_argument("--list", help="text file with more paths, one per line (# comments allowed)")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="search folders recursively (default: yes)")
    g = p.add_argument_group("windows and scores")
    g.add_argument("--window", type=float, help="window length in seconds (default: the model's input length, "
                                                "e.g. 10.24 s for 1024 frames)")
    g.add_argument("--hop", type=float, help="seconds between window starts (default: half the window)")
    g.add_argument("--threshold", type=float, default=0.5, help="score at which a window counts as a detection "
                                                                "(default: 0.5)")
    g.add_argument("--merge-gap", type=float, default=0.0,
                   help="also merge detections of a label separated by at most this many seconds (default: 0, "
                        "overlapping or touching windows only)")
    g.add_argument("--top-k", type=int, default=5, help="labels listed per window (default: 5)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="auto",
                   help="auto: sigmoid for multi-label models (as the checkpoint records, or AudioSet's 527 "
                        "labels), softmax otherwise")
    options.add_label_csv(g, "names of the model's outputs, in index order (default: the checkpoint's, else LABEL_i)")
    options.add_model_options(p)
    r = p.add_argument_group("running")
    options.add_loading(r, 16, "windows", workers=None)
    options.add_running(r)
    r.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="run the model under bfloat16 autocast (default: no)")
    r.add_argument("--plot-dir", help="also write one detection timeline PNG per file here (needs matplotlib)")
    r.add_argument("--plot-top", type=int, default=5, help="labels drawn per timeline (default: 5)")
    p.set_defaults(func=run)
