"""Extraction speed: :func:`ssast.prep.safe_extract` against the standard library's own.

Builds a tar.gz and a zip of ``--files`` files (``--kib`` KiB each, incompressible, spread over
``--dirs`` folders two levels deep, as dataset archives are laid out), then extracts each
``--repeat`` times into a fresh folder with
- ``stdlib``: ``tarfile.extractall(filter="data")`` / ``zipfile.extractall`` (the unchecked
  baseline for zip; for tar, the filter that CVE-2025-4517 defeats);
- ``safe_extract``: members created relative to the target's directory descriptor.
Reports the best wall and CPU time of the repeats and files per second (wall). File creation
dominates; on a busy machine, compare the CPU times.

    python benchmarks/extract.py                      # 5000 files of 4 KiB
    python benchmarks/extract.py --files 20000 --kib 16 --json out.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from ssast.prep import safe_extract


def build(folder: Path, files: int, kib: int, dirs: int) -> tuple[Path, Path]:
    tar_path, zip_path = folder / "a.tar.gz", folder / "a.zip"
    if tar_path.exists() and zip_path.exists():
        return tar_path, zip_path
    rng_bytes = os.urandom
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar, zipfile.ZipFile(zip_path, "w") as zf:
        for i in range(files):
            name = f"data/part{i % dirs:03d}/clip{i:06d}.wav"
            data = rng_bytes(kib * 1024)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            zf.writestr(name, data)
    return tar_path, zip_path


def stdlib(archive: Path, dest: Path) -> None:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")


def best_time(fn, archive: Path, work: Path, repeat: int) -> tuple[float, float]:
    """Best wall time and best CPU time (user + system of this process) over the repeats."""
    wall, cpu = [], []
    for r in range(repeat):
        dest = work / f"out{r}"
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(archive, dest)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        shutil.rmtree(dest)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--kib", type=int, default=4)
    ap.add_argument("--dirs", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssast_bench_extract"))
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    work = Path(args.workdir) / f"{args.files}x{args.kib}k"
    work.mkdir(parents=True, exist_ok=True)
    archives = build(work, args.files, args.kib, args.dirs)
    print(f"{args.files} files of {args.kib} KiB in {args.dirs} folders; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results = {}
    for archive in archives:
        for name, fn in (("stdlib", stdlib), ("safe_extract", safe_extract)):
            t, cpu = best_time(fn, archive, work, args.repeat)
            results[f"{archive.name} {name}"] = {"seconds": t, "cpu_seconds": cpu, "files_per_s": args.files / t}
            print(f"  {archive.name:<9} {name:<13} {t:6.2f} s wall  {cpu:6.2f} s CPU  {args.files / t:8.0f} files/s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"files": args.files, "kib": args.kib, "dirs": args.dirs, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
