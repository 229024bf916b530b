"""Throughput of the batched Kaldi fbank against torchaudio's per-clip path, on the same clips.

Every path computes the recipe's features (128 mel bins, 25 ms / 10 ms, hanning, htk_compat) of
the same random 16-bit clips (10 s at 16 kHz by default):

- ``torchaudio per clip``: ``compliance.kaldi.fbank`` one clip at a time, as the 2021 recipes do
  in their DataLoader workers;
- ``batched``: :func:`ssast.features.fbank` on batches of ``--batch-size`` clips;
- on CUDA also ``batched, incl. copy``: the batch starts in host memory.

    python benchmarks/features.py                          # CPU, and CUDA when there is one
    python benchmarks/features.py --clips 64 --batch-size 32 --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ssast.features import fbank, fbank_reference


def timed(fn, sync, repeat: int) -> float:
    """Best wall time of ``repeat`` runs after one warm-up run."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64, help="clips per run (default: 64)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batched call (default: 32)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default: 10)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--devices", default=None, help="comma list of cpu,cuda (default: cpu, and cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per path; the best counts (default: 3)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sr = args.sample_rate
    g = torch.Generator().manual_seed(0)
    host = ((0.1 * torch.randn(args.clips, int(args.seconds * sr), generator=g)).clamp(-1, 1) * 32767).round() / 32767
    chunks = list(host.split(args.batch_size))

    rows = []
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        data = [c.to(dev) for c in chunks]
        paths = {
            "torchaudio per clip": lambda: [fbank_reference(w, sr) for c in data for w in c],
            "batched": lambda: [fbank(c, sr) for c in data],
        }
        if dev == "cuda":
            paths["batched, incl. copy"] = lambda: [fbank(c.to(dev, non_blocking=False), sr) for c in chunks]
        for name, fn in paths.items():
            sec = timed(fn, sync, args.repeat)
            rows.append({"device": dev, "path": name, "clips": args.clips, "batch_size": args.batch_size,
                         "seconds": sec, "clips_per_s": args.clips / sec})

    print(f"fbank throughput: {args.clips} clips of {args.seconds:g} s at {sr} Hz, batch {args.batch_size}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, {platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(f"{'device':<7} {'path':<22} {'clips/s':>10} {'vs per clip':>12}")
    for r in rows:
        base = next(x for x in rows if x["device"] == r["device"] and x["path"] == "torchaudio per clip")
        r["speedup"] = r["clips_per_s"] / base["clips_per_s"]
        print(f"{r['device']:<7} {r['path']:<22} {r['clips_per_s']:>10.1f} {r['speedup']:>11.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
