"""Peak memory and time of ``ssast stats`` on a long recording, against reading whole files.

Writes one 16 kHz PCM-16 wav file of ``--minutes`` and ``--short`` files of 10 s (noise, once, to
``--workdir``): with the default 31, one batch of 32 clips. Each variant runs in its own process;
reported are that process's peak resident memory (``ru_maxrss``) and wall time:

- ``import only``: ``import ssast.cli`` and nothing else, the floor under both;
- ``whole files``: every file read whole, batches of 32 padded to their longest clip, the fbank
  computed over everything, then cropped to the target length (:func:`ssast.features.update_stats`
  on full clips: what ``ssast stats`` did before it read only what the target length needs);
- ``ssast stats``: the command (batch 32), which reads only the samples ``--target-length``
  frames need.

    python benchmarks/stats_memory.py                       # 10 min + 31 x 10 s, 1024 frames
    python benchmarks/stats_memory.py --minutes 20 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

WHOLE_FILES = """
import sys
from pathlib import Path
import ssast.cli
from ssast.audio import load_audio
from ssast.features import FeatureConfig, StatsAccumulator, stats_batches, update_stats
folder, target = Path(sys.argv[1]), int(sys.argv[2])
acc = StatsAccumulator()
for batch in stats_batches((load_audio(p) for p in sorted(folder.glob("*.wav"))), 32):
    update_stats(acc, batch, FeatureConfig(target_length=target))
r = acc.result()
print(f"mean: {r.mean:.7f}")
print(f"std:  {r.std:.7f}")
"""


def write_noise(path: Path, seconds: float, seed: int) -> None:
    n = int(seconds * SAMPLE_RATE)
    if path.exists() and sf.info(str(path)).frames == n:
        return
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for start in range(0, n, SAMPLE_RATE * 60):  # a minute at a time
            f.write(rng.uniform(-0.3, 0.3, min(SAMPLE_RATE * 60, n - start)).astype(np.float32))


def make_files(folder: Path, minutes: float, short: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_noise(folder / "long.wav", minutes * 60, 0)
    for i in range(short):
        write_noise(folder / f"short{i:03d}.wav", 10.0, i + 1)


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; its peak resident memory (MiB), wall time (s) and the mean/std it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    values = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("mean", "std")))
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": wall,
            **{k: float(v) for k, v in values.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the long file (default: 10)")
    ap.add_argument("--short", type=int, default=31, help="number of 10 s files beside it (default: 31)")
    ap.add_argument("--target-length", type=int, default=1024)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssast_bench_stats"))
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    folder = Path(args.workdir) / f"{args.minutes:g}min+{args.short}x10s"
    make_files(folder, args.minutes, args.short)
    runs = {
        "import only": [sys.executable, "-c", "import ssast.cli"],
        "whole files": [sys.executable, "-c", WHOLE_FILES, str(folder), str(args.target_length)],
        "ssast stats": [sys.executable, "-m", "ssast.cli", "stats", str(folder), "--target-length",
                        str(args.target_length), "--no-progress", "--device", "cpu"],
    }
    print(f"one file of {args.minutes:g} min and {args.short} of 10 s at 16 kHz, batch 32, target length "
          f"{args.target_length} frames; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results = {}
    for name, cmd in runs.items():
        results[name] = r = measure(cmd)
        stats = f"   mean {r['mean']:.5f}  std {r['std']:.5f}" if "mean" in r else ""
        print(f"  {name:<12} peak RSS {r['peak_rss_mib']:8.0f} MiB   {r['seconds']:6.1f} s{stats}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"minutes": args.minutes, "short": args.short, "target_length": args.target_length,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
