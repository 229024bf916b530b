"""Pictures from the command line (need matplotlib).

- ``ssast visualize-mask CHECKPOINT AUDIO --out PNG``: the masked-patch view of a pretrained model.
- ``ssast plot-timeline RESULT.json --out-dir DIR``: detection timelines from ``ssast predict`` JSON output.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from ..audio import load_audio
from ..device import default_device
from ..features import FeatureConfig
from ..loading import load
from ..plots import file_spectrogram, plot_mask_visualization, plot_timeline
from ..predict import common_folder, picture_names


def _need_matplotlib(cmd: str) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        print(f"ssast {cmd}: error: pictures need matplotlib (pip install matplotlib)", file=sys.stderr)
        return False
    return True


def run_visualize(args) -> int:
    if not _need_matplotlib("visualize-mask"):
        return 2
    loaded = load(args.model)
    if loaded.stage != "pretrain":
        raise ValueError(f"{args.model}: a fine-tuned model; the masked-patch view needs a pretraining checkpoint")
    model = loaded.model.to(default_device(args.device))
    wave = load_audio(args.audio, args.sample_rate)
    start = round(args.start * args.sample_rate)
    if start >= wave.numel():
        raise ValueError(f"{args.audio}: --start {args.start} s is past the end ({wave.numel() / args.sample_rate:.2f} s)")
    vis = plot_mask_visualization(model, wave[start:], args.out, mask_patch=args.mask_patch, cluster=args.cluster,
                                  seed=args.seed, sample_rate=args.sample_rate, features=loaded.features,
                                  title=f"{Path(args.audio).name} from {args.start:g} s")
    m, ok = vis.mask_index.shape[1], int(vis.correct.sum())
    print(f"wrote {args.out}: {ok} of {m} masked patches identified ({100 * ok / max(m, 1):.0f}%)")
    return 0


def run_timeline(args) -> int:
    if not _need_matplotlib("plot-timeline"):
        return 2
    try:
        data = json.loads(Path(args.result).read_text(encoding="utf-8"))
        files, settings = data["files"], data.get("settings", {})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{args.result}: not a JSON output of ssast predict ({e})") from None
    features = FeatureConfig.from_dict(settings["features"]) if "features" in settings else FeatureConfig()
    out = Path(args.out_dir)
    paths = [e["path"] for e in files]
    # Named as ssast predict names its tables and pictures: the input folders mirrored below OUT.
    for entry, name in zip(files, picture_names(paths, base=common_folder(paths))):
        spec = None
        if args.spectrogram:
            try:
                spec = file_spectrogram(entry["path"], features)
            except Exception as e:  # the audio may have moved: draw the scores alone
                print(f"no spectrogram for {entry['path']}: {e}", file=sys.stderr)
        plot_timeline(entry, out / name, spectrogram=spec, labels=args.label or None, top=args.top)
        print(f"wrote {out / name}")
    return 0


def register(subparsers) -> None:
    v = subparsers.add_parser(
        "visualize-mask", help="draw which masked patches a pretrained model identifies (PNG)",
        description="Mask patches of a clip's spectrogram as in pretraining, and draw the input, the masked "
                    "input, and which masked patches the masked-patch classifier picks out. Needs a "
                    "pretraining-stage checkpoint and matplotlib.")
    v.add_argument("model", help="pretraining model: checkpoint (project or released format) or run folder")
    v.add_argument("audio", help="audio file; the model's input length is taken from --start")
    v.add_argument("--out", required=True, help="output PNG")
    v.add_argument("--start", type=float, default=0.0, help="seconds into the file (default: 0)")
    v.add_argument("--mask-patch", type=int, help="patches to mask (default: the recipes' ratio, 400 of 512)")
    v.add_argument("--cluster", action=argparse.BooleanOptionalAction, default=None,
                   help="mask square clusters of patches (default: yes for patch models, no for frame models)")
    v.add_argument("--seed", type=int, default=0, help="seed of the mask (default: 0)")
    v.add_argument("--sample-rate", type=int, default=16000)
    v.add_argument("--device", help="device (default: cuda when a GPU is visible, else cpu)")
    v.set_defaults(func=run_visualize)

    t = subparsers.add_parser(
        "plot-timeline", help="draw detection timelines (PNG) from the JSON output of ssast predict",
        description="One PNG per file of a `ssast predict --format json` output: scores over time per label, "
                    "threshold and detections, over the file's spectrogram when the audio is still there. "
                    "Only the top-k scores of each window are in the JSON: a label's line has gaps where it "
                    "was not among them (predict --plot-dir draws full score lines).")
    t.add_argument("result", help="JSON written by ssast predict")
    t.add_argument("--out-dir", required=True)
    t.add_argument("--label", action="append", help="label to draw (repeatable; default: the top ones)")
    t.add_argument("--top", type=int, default=5, help="labels drawn when --label is not given (default: 5)")
    t.add_argument("--spectrogram", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the file's spectrogram above the scores (default: yes)")
    t.set_defaults(func=run_timeline)
