"""``ssast shards SRC OUTDIR``: pack a datafile or folder into webdataset tar shards."""
from __future__ import annotations

import argparse

from ..features import FeatureConfig
from ..shards import write_shards

HELP = "pack a JSON datafile, CSV or folder into webdataset tar shards (FLAC, 16-bit PCM or fbank + JSON labels)"


def _run(args) -> int:
    features = FeatureConfig(sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins) \
        if args.format == "fbank" else None
    summary = write_shards(args.src, args.outdir, max_size_mb=args.max_size_mb, max_count=args.max_count,
                           sample_rate=args.sample_rate, prefix=args.prefix, label_csv=args.label_csv,
                           labeled=args.labeled, shuffle=args.shuffle, seed=args.seed, num_workers=args.num_workers,
                           overwrite=args.overwrite, progress=args.progress, audio_format=args.format,
                           features=features)
    print(summary.format())
    if summary.pattern:
        print(f"read with: ssast.shards.shard_pipeline({summary.pattern!r}"
              + (f", labels={summary.labels_csv!r}" if summary.labels_csv else "") + ", ...)")
    return 0 if summary.num_clips else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shards", help=HELP, description=HELP + ". SRC is the official JSON datafile (with its label CSV), a CSV "
        "of path and label(s), a folder with one subfolder per class, or a folder of unlabeled audio. Clips are "
        "resampled to --sample-rate and downmixed; unreadable ones are skipped and listed.")
    p.add_argument("src", metavar="SRC", help="JSON datafile, CSV, or folder")
    p.add_argument("outdir", metavar="OUTDIR", help="folder for the shards, labels.csv and manifest.json")
    p.add_argument("--label-csv", help="label CSV (index,mid,display_name) for a JSON datafile or CSV "
                                       "(default: class_labels_indices.csv beside a datafile, if there)")
    p.add_argument("--max-size-mb", type=float, default=256.0, help="largest shard in MB (default: 256)")
    p.add_argument("--max-count", type=int, default=None, help="most clips per shard (default: no limit)")
    p.add_argument("--sample-rate", type=int, default=16000, help="sample rate of the stored audio (default: 16000)")
    p.add_argument("--format", choices=("flac", "pcm16", "fbank"), default="flac",
                   help="how clips are stored: flac (smallest), pcm16 (raw 16-bit samples: no decoding cost), "
                        "fbank (precomputed float16 log-mel: no feature cost) (default: flac)")
    p.add_argument("--num-mel-bins", type=int, default=128, help="mel bins of --format fbank (default: 128)")
    p.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar, ... (default: shard)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="write clips in a seeded random order, so shards mix classes (default: on)")
    p.add_argument("--seed", type=int, default=0, help="seed of that order (default: 0)")
    p.add_argument("--labeled", action=argparse.BooleanOptionalAction, default=None,
                   help="read a folder as per-class (--labeled) or as unlabeled audio (--no-labeled); "
                        "default: per-class when it has class subfolders and no audio at its top")
    p.add_argument("--num-workers", type=int, default=0,
                   help="processes decoding and encoding audio (default: 0, in-process)")
    p.add_argument("--overwrite", action="store_true", help="replace shards with this prefix already in OUTDIR")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: on)")
    p.set_defaults(func=_run)
