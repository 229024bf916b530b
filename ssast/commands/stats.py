"""``ssast stats SRC``: a dataset's mean and std of the unnormalized fbank features.

These are the ``mean``/``std`` that normalize the model input, ``(x - mean) / (2 * std)``.
Each clip is read only as far as ``--target-length`` frames need, so memory is bounded by the
batch size times the target length, whatever the length of the files. A clip that cannot be
read, or whose features are not finite, is skipped and named; no statistics are printed when
nothing usable is left.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import AudioError, load_audio
from ..device import default_device
from ..features import FeatureConfig, StatsAccumulator, fbank, frame_geometry, num_frames, pad_or_crop
from ..files import json_text
from ..sources import read_source, validate


class _Clips(Dataset):
    """Clip i -> (path, waveform or None, problem or None); a bad file is reported, not raised.

    Only the first ``max_samples`` samples (at ``sample_rate``) of each file are read.
    """

    def __init__(self, paths: list[str], sample_rate: int, max_samples: int):
        self.paths, self.sample_rate, self.max_samples = paths, sample_rate, max_samples

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            return path, load_audio(path, self.sample_rate, max_samples=self.max_samples), None
        except AudioError as e:
            return path, None, e.problem
        except Exception as e:  # a decoder failure of any kind must not stop the other clips
            return path, None, f"{type(e).__name__}: {e}"


def _as_list(batch):
    return batch


def samples_for_frames(config) -> int:
    """Samples at ``config.sample_rate`` that give ``config.target_length`` fbank frames."""
    size, shift, _ = frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)
    return size + (config.target_length - 1) * shift


def add_batch(acc, waves: list[torch.Tensor], config, include_padding: bool = False, device=None) -> list[int]:
    """Add the fbank values of some 1-D clips to ``acc``, each cropped to the target length, as
    :func:`ssast.features.update_stats` does, leaving out every clip whose features are not all
    finite. Returns the positions of the clips left out."""
    c = config
    lens = torch.tensor([w.shape[-1] for w in waves])  # (B,)
    batch = torch.nn.utils.rnn.pad_sequence([w.reshape(-1) for w in waves], batch_first=True)  # (B, S)
    if device is not None:
        batch = batch.to(device)
    feats = fbank(batch, c.sample_rate, c.num_mel_bins, lengths=lens, frame_length_ms=c.frame_length_ms,
                  frame_shift_ms=c.frame_shift_ms, window=c.window)  # (B, T, M), zeros past each clip's end
    feats = pad_or_crop(feats, c.target_length)  # (B, L, M)
    finite = torch.isfinite(feats).flatten(1).all(dim=1).cpu()  # (B,)
    counts = num_frames(lens, c.sample_rate, c.frame_length_ms, c.frame_shift_ms).clamp_max(c.target_length)  # (B,)
    if finite.any():
        feats, counts = feats[finite.to(feats.device)], counts[finite]  # (G, L, M), (G,)
        if include_padding:
            values, frames = feats, feats.shape[0] * feats.shape[1]
        else:
            keep = torch.arange(feats.shape[1]) < counts[:, None]  # (G, L) real frames only
            values, frames = feats[keep.to(feats.device)], int(counts.sum())
        acc.update(values, clips=int(finite.sum()), frames=frames)
    return [i for i, ok in enumerate(finite.tolist()) if not ok]


def run(args) -> int:
    from tqdm import tqdm

    source = read_source(args.src, label_csv=args.label_csv)
    if args.limit is not None:
        source.items = source.items[: args.limit]
    # Statistics need audio only: labels are not checked here.
    report = validate(replace(source, labels=None, display_names=None))
    skipped = list(report.bad)
    config = FeatureConfig(sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins,
                           target_length=args.target_length)
    device = default_device(args.device)

    clips = _Clips([it.path for it in report.good], config.sample_rate, samples_for_frames(config))
    loader = DataLoader(clips, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=_as_list)
    acc = StatsAccumulator()
    with tqdm(total=len(report.good), unit="clip", desc="fbank stats", disable=not args.progress) as bar:
        for batch in loader:
            good = [(path, wave) for path, wave, problem in batch if wave is not None]
            skipped += [(path, problem) for path, wave, problem in batch if wave is None]
            if good:
                bad = add_batch(acc, [wave for _, wave in good], config, include_padding=args.include_padding,
                                device=device)
                skipped += [(good[i][0], "fbank features are not finite (inf or NaN)") for i in bad]
            bar.update(len(batch))

    for path, problem in skipped:
        print(f"skipped {path}: {problem}", file=sys.stderr)
    stats = acc.result() if acc.n else None
    if stats is None or not (math.isfinite(stats.mean) and math.isfinite(stats.std)):
        print(f"ssast stats: error: no usable clip in {args.src} ({len(skipped)} skipped)", file=sys.stderr)
        return 2
    print(f"clips: {stats.clips} used, {len(skipped)} skipped ({stats.frames} frames)")
    print(f"mean: {stats.mean:.7f}")
    print(f"std:  {stats.std:.7f}")
    if args.json:
        out = {**stats.to_dict(), "source": str(args.src), "include_padding": args.include_padding,
               "features": config.to_dict() | {"mean": stats.mean, "std": stats.std},
               "skipped": [{"path": p, "problem": q} for p, q in skipped]}
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json_text(out, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stats", help="compute a dataset's fbank mean and std (for normalizing the model input)",
        description="Mean and std of the unnormalized Kaldi fbank over every frame and mel bin of a "
                    "dataset, each clip cropped to --target-length frames (only that much of each "
                    "file is read). Unreadable clips, and clips whose features are not finite, are "
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
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding audio (default: 0)")
    p.add_argument("--device", help="device for the fbank (default: cuda when available, else cpu)")
    p.add_argument("--json", help="also write the result (and the skipped clips) to this JSON file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: on)")
    p.set_defaults(func=run)
