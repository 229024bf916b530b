"""Clips per second into the model: the shard reader with batched features against the 2021 loader.

Both read the same generated clips (``--clips`` clips of ``--seconds`` s at 16 kHz, written once
to ``--workdir``) with the same DataLoader worker count and batch size, and deliver normalized
(B, 1024, 128) fbank batches, AudioSet's mean and std:

- ``2021 style``: a JSON datafile of wav files; a map-style dataset whose workers read each wav,
  compute its Kaldi fbank with torchaudio one clip at a time
  (:func:`ssast.features.fbank_reference`), pad or crop it to the target length and normalize
  it, as the official dataloader does;
- ``shards``: :func:`ssast.shards.shard_pipeline` over FLAC shards of the same clips (workers
  decode, crop or pad waveforms and batch them); the training process computes each batch's
  features at once with :class:`ssast.features.FeatureExtractor` on ``--device`` (the GPU set-up);
- ``shards, features in workers``: the same, with each batch's features computed at once inside
  the worker (the CPU set-up, where the training process has no spare cores).

    python benchmarks/data_loading.py                              # 200 clips of 10 s, 2 workers
    python benchmarks/data_loading.py --clips 400 --workers 8 --batch 32 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ssast.audio import load_audio
from ssast.datasets import frames_to_samples
from ssast.features import AUDIOSET_MEAN, AUDIOSET_STD, FeatureConfig, FeatureExtractor, fbank_reference
from ssast.shards import shard_pipeline, write_shards

SAMPLE_RATE = 16000


def make_clips(folder: Path, clips: int, seconds: float) -> Path:
    """``clips`` wav files of tones in noise and a JSON datafile listing them (kept if present)."""
    datafile = folder / "data.json"
    if datafile.exists() and len(json.loads(datafile.read_text())["data"]) == clips:
        return datafile
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    entries = []
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(t.shape)
        path = folder / "wav" / f"clip{i:05d}.wav"
        sf.write(path, x.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        entries.append({"wav": str(path), "labels": ""})
    datafile.write_text(json.dumps({"data": entries}))
    return datafile


class Official2021Dataset(torch.utils.data.Dataset):
    """The 2021 loader's work per clip: read, Kaldi fbank, pad/crop to target length, normalize."""

    def __init__(self, datafile: Path, target_length: int):
        self.paths = [e["wav"] for e in json.loads(datafile.read_text())["data"]]
        self.target_length = target_length

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        wave = load_audio(self.paths[i], SAMPLE_RATE)
        fb = fbank_reference(wave, SAMPLE_RATE, 128)  # (T, 128)
        pad = self.target_length - fb.shape[0]
        fb = torch.nn.functional.pad(fb, (0, 0, 0, pad)) if pad > 0 else fb[:self.target_length]
        return (fb - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)  # (target_length, 128)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def drain(loader, device: str, to_features=None) -> tuple[int, float]:
    """Clips delivered by ``loader`` as (B, frames, 128) features on ``device``, and the seconds taken."""
    n = 0
    t0 = time.perf_counter()
    for b in loader:
        x = to_features(b) if to_features else b.to(device, non_blocking=True)  # (B, frames, 128)
        n += x.shape[0]
    sync(device)
    return n, time.perf_counter() - t0


def run_2021(datafile: Path, workers: int, batch: int, frames: int, device: str) -> tuple[int, float]:
    loader = torch.utils.data.DataLoader(Official2021Dataset(datafile, frames), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.startswith("cuda"))
    return drain(loader, device)


def _pipeline(pattern: str, batch: int, frames: int):
    return shard_pipeline(pattern, num_samples=frames_to_samples(frames), batch_size=batch, train=True,
                          shuffle_buffer=100, drop_last=False, seed=0)


def run_shards(pattern: str, workers: int, batch: int, frames: int, device: str) -> tuple[int, float]:
    extractor = FeatureExtractor(FeatureConfig(target_length=frames))
    loader = torch.utils.data.DataLoader(_pipeline(pattern, batch, frames), batch_size=None, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    return drain(loader, device, lambda b: extractor(b["wave"].to(device, non_blocking=True),
                                                      lengths=b["length"].to(device)))


class FeaturesInWorkers(torch.utils.data.IterableDataset):
    """The shard pipeline with each batch's features computed at once inside the DataLoader worker."""

    def __init__(self, pipe, extractor: FeatureExtractor):
        self.pipe, self.extractor = pipe, extractor

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # one thread per worker, as the 2021 loader's workers have
        for b in self.pipe:
            yield self.extractor(b["wave"], lengths=b["length"])


def run_shards_worker_features(pattern: str, workers: int, batch: int, frames: int, device: str) -> tuple[int, float]:
    extractor = FeatureExtractor(FeatureConfig(target_length=frames))
    loader = torch.utils.data.DataLoader(FeaturesInWorkers(_pipeline(pattern, batch, frames), extractor),
                                         batch_size=None, num_workers=workers, pin_memory=device.startswith("cuda"))
    return drain(loader, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both loaders")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=1024, help="target length in frames")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per loader (the best is reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the shard path computes features (and both deliver batches)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the training process")
    p.add_argument("--workdir", help="folder for the clips and shards, reused between runs (default: a temporary one)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ssast-bench-")
        work = Path(tmp.name)
    t0 = time.perf_counter()
    datafile = make_clips(work, args.clips, args.seconds)
    shard_dir = work / "shards"
    manifest = shard_dir / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["clips"] == args.clips:
        pattern = str(shard_dir / json.loads(manifest.read_text())["pattern"])
    else:
        pattern = write_shards(datafile, shard_dir, max_size_mb=64, overwrite=True).pattern
    print(f"{args.clips} clips of {args.seconds:g} s in {work} (prepared in {time.perf_counter() - t0:.1f} s); "
          f"{args.workers} workers, batch {args.batch}, {args.frames} frames, features on {args.device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}")

    results = {}
    runs = (("2021 style", run_2021, datafile), ("shards", run_shards, pattern),
            ("shards, features in workers", run_shards_worker_features, pattern))
    for name, fn, src in runs:
        best = None
        for _ in range(args.repeats):
            n, secs = fn(src, args.workers, args.batch, args.frames, args.device)
            best = secs if best is None else min(best, secs)
        results[name] = {"clips": n, "seconds": best, "clips_per_second": n / best}
        print(f"  {name:28s} {n:6d} clips  {best:7.2f} s  {n / best:8.1f} clips/s", flush=True)
    base = results["2021 style"]["clips_per_second"]
    speedup = {name: r["clips_per_second"] / base for name, r in results.items() if name != "2021 style"}
    for name, x in speedup.items():
        print(f"  {name} / 2021 style: {x:.2f}x")
    if args.json:
        info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else
                platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "clips": args.clips, "seconds": args.seconds, "workers": args.workers,
                "batch": args.batch, "frames": args.frames}
        Path(args.json).write_text(json.dumps({"info": info, "results": results, "speedup": speedup}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
