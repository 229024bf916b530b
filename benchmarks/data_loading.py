"""Feed rate of the shard reader per sample format, per CPU core, against the 2021 loader.

The same generated clips (``--clips`` clips of ``--seconds`` s at 16 kHz, tones in noise, written
once to ``--workdir``) are packed into shards in each format of :func:`ssast.shards.write_shards`
(``flac``, ``pcm16``, ``fbank``), and read as in pretraining: :func:`ssast.shards.shard_pipeline`
in its endless resampled mode, random crops to 1024 frames (164080 samples; 10 s clips are
padded), a shuffle buffer of ``--shuffle-buffer`` clips, batches of ``--batch``, through a
DataLoader with ``--num-workers`` workers and ``prefetch_factor=4``, as the training engine
runs it. Per format:

- ``feed`` (features left to the device): batches ready for the device, i.e. decoded, cropped
  or padded and collated into (B, N) float32 waveforms (``pcm16``, ``flac``) or (B, T, F) float16
  fbank (``fbank``), then pinned and sent to the GPU when there is one. Without a GPU the pin
  step is stood in for by copying each batch into a preallocated staging buffer in the training
  process (the same bytes the pin copy moves).
- ``feed int16``: the same with ``wave_dtype=torch.int16``: batches of the 16-bit samples as
  stored, for the device to scale (half the bytes to move; audio formats only).
- ``cpu features`` (the CPU set-up): the same, plus each batch's normalized (B, 1024, 128) model
  input computed at once inside the worker (:class:`ssast.features.FeatureExtractor`; for
  ``fbank``, only padding and normalization are left).

How "per core" is measured: after ``--warmup`` batches (worker started, shuffle buffer full),
batches are drawn for at least ``--min-seconds``; the CPU time (user + system) of the training
process and of all its worker processes over that window is read from the kernel (psutil), and
clips per CPU-second is the figure reported as clips/s per core. The wall-clock rate and the
cores actually used (CPU seconds / wall seconds) are reported beside it. Each figure is the
median of ``--repeats`` runs. Everything is measured with one worker (the training set-up: the
batches cross from the worker to the training process through shared memory) and again with
none (``num_workers=0``: the reader in the training process, its own cost alone). Bytes per
clip are the shard bytes (tar headers included) over the clip count. The machine's load
average (``uptime``) is recorded before and after, since other processes share the cores.

The ``2021 style`` loader reads the clips' wav files through a map-style dataset whose workers
compute each clip's Kaldi fbank with torchaudio one at a time (:func:`ssast.features.fbank_reference`),
pad or crop it and normalize it, as the official dataloader does; it is measured the same way
(its workers, its CPU time, over whole passes over the clips).

    python benchmarks/data_loading.py                                  # 200 clips, 1 worker, then 0
    python benchmarks/data_loading.py --formats pcm16 --repeats 5 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch
import webdataset as wds

from ssast.audio import load_audio
from ssast.datasets import frames_to_samples
from ssast.features import AUDIOSET_MEAN, AUDIOSET_STD, FeatureConfig, FeatureExtractor, fbank_reference
from ssast.shards import shard_pipeline, write_shards

SAMPLE_RATE = 16000
FORMATS = ("flac", "pcm16", "fbank")
MODES = ("feed", "feed int16", "cpu features")


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


def make_shards(work: Path, datafile: Path, fmt: str, clips: int) -> tuple[str, float]:
    """Shards of the clips in ``fmt`` (kept if present): their pattern and bytes per clip."""
    out = work / f"shards-{fmt}"
    manifest = out / "manifest.json"
    if not (manifest.exists() and json.loads(manifest.read_text())["clips"] == clips):
        extra = {} if fmt == "flac" else {"audio_format": fmt}
        write_shards(datafile, out, max_size_mb=64, overwrite=True, **extra)
    m = json.loads(manifest.read_text())
    return str(out / m["pattern"]), sum(s["bytes"] for s in m["shards"]) / m["clips"]


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


class FeaturesInWorkers(torch.utils.data.IterableDataset):
    """The shard pipeline with each batch's normalized model input computed inside the worker."""

    def __init__(self, pipe, extractor: FeatureExtractor):
        self.pipe, self.extractor = pipe, extractor

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # one thread per worker, as the 2021 loader's workers have
        for b in self.pipe:
            if "fbank" in b:  # precomputed: zero-padded to the target length already; normalize
                yield self.extractor.normalize(b["fbank"].float())  # (B, T, F)
            else:
                yield self.extractor(b["wave"], lengths=b["length"])  # (B, T, F)


class Sink:
    """Where batches go: pinned and sent to the GPU, or, without one, copied into a staging buffer."""

    def __init__(self, device: str):
        self.device, self.buffers = device, {}

    def __call__(self, batch) -> int:
        x = batch if isinstance(batch, torch.Tensor) else batch.get("fbank", batch.get("wave"))
        if self.device.startswith("cuda"):
            x.to(self.device, non_blocking=True)
        else:
            buf = self.buffers.get((x.shape, x.dtype))
            if buf is None:
                buf = self.buffers[(x.shape, x.dtype)] = torch.empty_like(x)
            buf.copy_(x)
        return x.shape[0]

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its live descendants."""
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(loader, sink: Sink, warmup: int, min_seconds: float, min_batches: int) -> dict:
    """Steady-state rate of ``loader``: clips, wall seconds and CPU seconds after ``warmup`` batches."""
    it = iter(loader)
    for _ in range(warmup):
        sink(next(it))
    sink.sync()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    clips = batches = 0
    while batches < min_batches or time.perf_counter() - t0 < min_seconds:
        try:
            clips += sink(next(it))
        except StopIteration:
            break
        batches += 1
    sink.sync()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    del it  # stops the workers
    return {"clips": clips, "wall_s": wall, "cpu_s": cpu, "clips_per_s": clips / wall,
            "cores_used": cpu / wall, "clips_per_s_per_core": clips / cpu}


def _loader(dataset, args, **kw):
    workers = args.num_workers
    return torch.utils.data.DataLoader(dataset, num_workers=workers, pin_memory=args.device.startswith("cuda"),
                                       prefetch_factor=4 if workers else None, **kw)


def shard_run(pattern: str, args, mode: str) -> dict:
    frames = args.frames
    extra = {"wave_dtype": torch.int16} if mode == "feed int16" else {}
    pipe = shard_pipeline(pattern, num_samples=frames_to_samples(frames), batch_size=args.batch, train=True,
                          resampled=True, epoch_length=10 ** 9, shuffle_buffer=args.shuffle_buffer, seed=0, **extra)
    if mode == "cpu features":
        pipe = FeaturesInWorkers(pipe, FeatureExtractor(FeatureConfig(target_length=frames)))
    return measure(_loader(pipe, args, batch_size=None), Sink(args.device), args.warmup, args.min_seconds,
                   args.min_batches)


def run_2021(datafile: Path, args) -> dict:
    # Map-style: a pass is one epoch of the clips; enough passes to fill the time are chained.
    ds = torch.utils.data.ConcatDataset([Official2021Dataset(datafile, args.frames)] * 50)
    loader = _loader(ds, args, batch_size=args.batch, shuffle=True)
    return measure(loader, Sink(args.device), args.warmup, args.min_seconds, args.min_batches)


def tar_read_ms(pattern: str) -> dict:
    """Milliseconds per sample to read the shards' members: webdataset's tar reader and ours."""
    from ssast import shards

    urls = shards.expand_shards(pattern)
    out = {}
    readers = (("webdataset", lambda: wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))),
               ("ssast", lambda: (s for u in urls for s in shards.read_tar(u))))
    for name, reader in readers if hasattr(shards, "read_tar") else readers[:1]:
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(1 for _ in reader())
            best = min(best or 1e9, (time.perf_counter() - t0) / n * 1e3)
        out[name] = best
    return out


def median_of(runs: list[dict]) -> dict:
    keys = ("clips_per_s_per_core", "clips_per_s", "cores_used")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}


def measure_all(args, datafile: Path, shard_sets: dict, num_workers: int, with_2021: bool) -> dict:
    """Every loader and mode with ``num_workers`` DataLoader workers: {loader: {mode: figures}}."""
    args = argparse.Namespace(**{**vars(args), "num_workers": num_workers})
    results = {}
    if with_2021:
        results["2021 style"] = {"format": "wav", "bytes_per_clip": sum(
            os.path.getsize(e["wav"]) for e in json.loads(datafile.read_text())["data"]) / args.clips,
            "cpu features": median_of([run_2021(datafile, args) for _ in range(args.repeats)])}
    for fmt, (pattern, size) in shard_sets.items():
        results[fmt] = {"format": fmt, "bytes_per_clip": size}
        for mode in MODES:
            if mode == "feed int16" and (fmt == "fbank" or not args.int16):
                continue
            results[fmt][mode] = median_of([shard_run(pattern, args, mode) for _ in range(args.repeats)])
    return results


def print_table(results: dict, num_workers: int) -> None:
    heads = {"feed": "feed (float32 waves)", "feed int16": "feed (int16 waves)", "cpu features": "cpu features"}
    where = f"{num_workers} DataLoader worker(s) and the training process" if num_workers else "the training process"
    print(f"clips/s per core (clips/s wall, cores used), {where}:")
    print(f"{'loader':12s} {'bytes/clip':>10s} | " + " | ".join(f"{heads[m]:>26s}" for m in MODES))
    for name, r in results.items():
        cells = [f"{m['clips_per_s_per_core']:8.0f} ({m['clips_per_s']:6.0f}, {m['cores_used']:4.2f})"
                 if (m := r.get(mode)) else "-" for mode in MODES]
        print(f"{name:12s} {r['bytes_per_clip'] / 1e3:7.0f} kB | " + " | ".join(f"{c:>26s}" for c in cells))


def per_core(results: dict, mode: str) -> dict:
    return {name: r[mode]["clips_per_s_per_core"] for name, r in results.items() if mode in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--num-workers", type=int, nargs="+", default=[1, 0],
                   help="DataLoader workers, one set of measurements each; the first gives the headline "
                        "figures (default: 1, then 0: the reader in the training process itself)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=1024, help="target length in frames")
    p.add_argument("--shuffle-buffer", type=int, default=100)
    p.add_argument("--warmup", type=int, default=8, help="batches before the timed window")
    p.add_argument("--min-seconds", type=float, default=3.0, help="least length of the timed window")
    p.add_argument("--min-batches", type=int, default=20, help="least batches in the timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the median is reported)")
    p.add_argument("--no-2021", dest="run_2021", action="store_false", help="skip the 2021-style loader")
    p.add_argument("--no-int16", dest="int16", action="store_false",
                   help="skip the feed of int16 waves (shard_pipeline(..., wave_dtype=torch.int16))")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where batches are sent (cpu: a staging copy stands in for pinning)")
    p.add_argument("--workdir", help="folder for the clips and shards, reused between runs (default: a temporary one)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(1)  # the training process does no math here; one thread, as counted

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ssast-bench-")
        work = Path(tmp.name)
    t0 = time.perf_counter()
    datafile = make_clips(work, args.clips, args.seconds)
    shard_sets = {fmt: make_shards(work, datafile, fmt, args.clips) for fmt in args.formats}
    load_before = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    print(f"{args.clips} clips of {args.seconds:g} s in {work} (prepared in {time.perf_counter() - t0:.1f} s); "
          f"batch {args.batch}, {args.frames} frames, to {args.device}; {os.cpu_count()} CPUs ({cpu}), "
          f"torch {torch.__version__}; load average {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)

    runs = {n: measure_all(args, datafile, shard_sets, n, args.run_2021 and i == 0)
            for i, n in enumerate(args.num_workers)}
    tar = tar_read_ms(shard_sets["pcm16"][0]) if "pcm16" in shard_sets else {}
    load_after = os.getloadavg()

    for n, results in runs.items():
        print_table(results, n)
    if tar:
        print("tar reading, ms per clip: " + ", ".join(f"{k} {v:.3f}" for k, v in tar.items()))
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu,
                "cpus": os.cpu_count(), "torch": torch.__version__, "clips": args.clips, "seconds": args.seconds,
                "num_workers": args.num_workers, "batch": args.batch, "frames": args.frames,
                "shuffle_buffer": args.shuffle_buffer, "repeats": args.repeats,
                "load_average_before": load_before, "load_average_after": load_after}

        def summary(results: dict) -> dict:
            return {"feed_clips_per_s_per_core": per_core(results, "feed"),
                    "feed_int16_clips_per_s_per_core": per_core(results, "feed int16"),
                    "cpu_features_clips_per_s_per_core": per_core(results, "cpu features")}

        head, *rest = args.num_workers
        out = {"info": info, **summary(runs[head]),
               "bytes_per_clip": {name: r["bytes_per_clip"] for name, r in runs[head].items()},
               "tar_read_ms_per_clip": tar,
               **{f"num_workers={n}": summary(runs[n]) for n in rest},
               "results": {f"num_workers={n}": results for n, results in runs.items()}}
        Path(args.json).write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
