"""``ssast stats SRC``: a dataset's mean and std of the unnormalized fbank features.

These are the ``mean``/``std`` that normalize the model input, ``(x - mean) / (2 * std)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Dataset


class _Clips(Dataset):
    """Clip i -> (path, waveform or None, problem or None); a bad file is reported, not raised."""

    def __init__(self, paths: list[str], sample_rate: int):
        self.paths, self.sample_rate = paths, sample_rate

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ..audio import AudioError, load_audio

        path = self.paths[i]
        try:
            return path, load_audio(path, self.sample_rate), None
        except AudioError as e:
            return path, None, e.problem
        except Exception as e:  # a decoder failure of any kind must not stop the other clips
            return path, None, f"{type(e).__name__}: {e}"


def _as_list(batch):
    return batch


def run(args) -> int:
    from tqdm import tqdm

    from ..features import FeatureConfig, StatsAccumulator, update_stats
    from ..sources import read_source, validate

    source = read_source(args.src, label_csv=args.label_csv)
    if args.limit is not None:
        source.items = source.items[: args.limit]
    # Statistics need audio only: labels are not checked here.
    report = validate(replace(source, labels=None, display_names=None))
    skipped = list(report.bad)
    config = FeatureConfig(sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins,
                           target_length=args.target_length)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    loader = DataLoader(_Clips([it.path for it in report.good], config.sample_rate), batch_size=args.batch_size,
                        num_workers=args.workers, collate_fn=_as_list)
    acc = StatsAccumulator()
    with tqdm(total=len(report.good), unit="clip", desc="fbank stats", disable=args.quiet) as bar:
        for batch in loader:
            waves = []
            for path, wave, problem in batch:
                if wave is None:
                    skipped.append((path, problem))
                else:
                    waves.append(wave)
            if waves:
                update_stats(acc, waves, config, include_padding=args.include_padding, device=device)
            bar.update(len(batch))

    for path, problem in skipped:
        print(f"skipped {path}: {problem}", file=sys.stderr)
    if acc.n == 0:
        print(f"ssast stats: error: no usable clip in {args.src} ({len(skipped)} skipped)", file=sys.stderr)
        return 2
    stats = acc.result()
    print(f"clips: {stats.clips} used, {len(skipped)} skipped ({stats.frames} frames)")
    print(f"mean: {stats.mean:.7f}")
    print(f"std:  {stats.std:.7f}")
    if args.json:
        out = {**stats.to_dict(), "source": str(args.src), "include_padding": args.include_padding,
               "features": config.to_dict() | {"mean": stats.mean, "std": stats.std},
               "skipped": [{"path": p, "problem": q} for p, q in skipped]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stats", help="compute a dataset's fbank mean and std (for normalizing the model input)",
        description="Mean and std of the unnormalized Kaldi fbank over every frame and mel bin of a "
                    "dataset, each clip cropped to --target-length frames. Unreadable clips are "
                    "skipped and listed.")
    p.add_argument("src", help="JSON datafile, CSV of paths (and labels), or folder of audio")
    p.add_argument("--label-csv", help="label CSV of a JSON datafile (labels are not needed for stats)")
    p.add_argument("--sample-rate", type=int, default=16000, help="resample clips to this rate (default: 16000)")
    p.add_argument("--target-length", type=int, default=1024, help="frames per clip the model sees (default: 1024)")
    p.add_argument("--num-mel-bins", type=int, default=128)
    p.add_argument("--include-padding", action=argparse.BooleanOptionalAction, default=False,
                   help="also count the zero frames that pad shorter clips to --target-length, as the "
                        "official get_norm_stats.py does (default: real frames only)")
    p.add_argument("--limit", type=int, help="use only the first N clips")
    p.add_argument("--batch-size", type=int, default=32, help="clips per fbank batch (default: 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding audio (default: 0)")
    p.add_argument("--device", help="device for the fbank (default: cuda when available, else cpu)")
    p.add_argument("--json", help="also write the result (and the skipped clips) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

