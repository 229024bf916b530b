"""FSD50K: 51,197 Freesound clips, 200 AudioSet-ontology classes, multi-label.

The Zenodo release unpacks to ``FSD50K.dev_audio/``, ``FSD50K.eval_audio/`` (44.1 kHz wavs named
``<fname>.wav``) and ``FSD50K.ground_truth/`` with ``dev.csv`` (``fname,labels,mids,split``, split
``train`` or ``val``), ``eval.csv`` (``fname,labels,mids``) and ``vocabulary.csv`` (no header:
``index,label,mid``). The recipe writes ``fsd50k_{train,valid,eval}_data.json`` (labels are the
AudioSet mids) and the label CSV from the vocabulary; by default the audio is resampled to 16 kHz
into ``OUT/audio_16k/{dev,eval}/``.

The audio zips are split in parts (``.z01``...); :func:`merge_split_zip` joins them with
``zip -s 0`` as the dataset's instructions say.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

from ..audio import DEFAULT_SAMPLE_RATE
from .common import (
    LABEL_CSV,
    Prepared,
    PrepError,
    default_cache,
    download,
    ensure_extracted,
    resample_many,
    write_datafile,
    write_label_csv,
)

FSD50K_URL = "https://zenodo.org/records/4060432/files/{name}?download=1"
FSD50K_ARCHIVES = {
    "FSD50K.dev_audio": ["FSD50K.dev_audio.z01", "FSD50K.dev_audio.z02", "FSD50K.dev_audio.z03",
                         "FSD50K.dev_audio.z04", "FSD50K.dev_audio.z05", "FSD50K.dev_audio.zip"],
    "FSD50K.eval_audio": ["FSD50K.eval_audio.z01", "FSD50K.eval_audio.zip"],
    "FSD50K.ground_truth": ["FSD50K.ground_truth.zip"],
}


def merge_split_zip(first_parts_zip: str | os.PathLike, merged: str | os.PathLike) -> Path:
    """Join a split zip (``X.z01``, ``X.z02``, ..., ``X.zip``) into one archive with ``zip -s 0``."""
    merged = Path(merged)
    if merged.is_file() and merged.stat().st_size > 0:
        return merged
    if shutil.which("zip") is None:
        raise PrepError(f"{first_parts_zip}: joining a split zip needs the zip tool (apt-get install zip)")
    tmp = merged.with_name(merged.stem + ".part.zip")
    r = subprocess.run(["zip", "-q", "-s", "0", str(first_parts_zip), "--out", str(tmp)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PrepError(f"{first_parts_zip}: zip -s 0 failed: {(r.stderr or r.stdout).strip()}")
    os.replace(tmp, merged)
    return merged


def fetch_fsd50k(dest: str | os.PathLike, cache: str | os.PathLike, url: str = FSD50K_URL) -> Path:
    """Download the audio and ground-truth archives into ``cache``, join and extract them into
    ``dest``; folders already in ``dest`` are not fetched again."""
    dest, cache = Path(dest), Path(cache)

    def fetch(folder: str, parts: list[str]) -> Path:
        paths = [download(url.format(name=p), cache / p, hint="pass the extracted folders with --root") for p in parts]
        return paths[-1] if len(paths) == 1 else merge_split_zip(paths[-1], cache / f"{folder}.merged.zip")

    for folder, parts in FSD50K_ARCHIVES.items():
        ensure_extracted(dest, f"{folder}.zip", lambda f=folder, p=parts: fetch(f, p), present=(dest / folder).is_dir())
    return dest


def _read_rows(path: Path, header: bool) -> list[list[str]] | list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f)) if header else [r for r in csv.reader(f) if r]
    except OSError as e:
        raise PrepError(f"{path}: cannot read ({e.strerror or e})") from None


def read_vocabulary(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(mids, label names) in index order from ``vocabulary.csv`` (``index,label,mid``, no header)."""
    rows = _read_rows(Path(path), header=False)
    try:
        rows = sorted(rows, key=lambda r: int(r[0]))
        return [r[2] for r in rows], [r[1] for r in rows]
    except (ValueError, IndexError):
        raise PrepError(f"{path}: not the FSD50K vocabulary: expected rows index,label,mid") from None


def prepare_fsd50k(out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                   cache: str | os.PathLike | None = None, url: str = FSD50K_URL, resample: bool = True,
                   resampler: str = "auto", workers: int = 2, sample_rate: int = DEFAULT_SAMPLE_RATE) -> Prepared:
    """Prepare FSD50K in ``out`` from ``root`` (the folder holding the three FSD50K.* folders),
    else from ``out``, downloading what is missing there from Zenodo into ``cache``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if root is None:
        root = fetch_fsd50k(out, Path(cache or default_cache(out)), url)
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    for need in (gt / "dev.csv", gt / "eval.csv", gt / "vocabulary.csv"):
        if not need.is_file():
            raise PrepError(f"{root}: not an FSD50K tree: {need.relative_to(root)} not found")
    mids, names = read_vocabulary(gt / "vocabulary.csv")
    known = set(mids)
    result = Prepared("fsd50k", out)

    splits: dict[str, list[tuple[Path, tuple[str, ...]]]] = {"train": [], "valid": [], "eval": []}
    for csv_name, audio_dir in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        rows = _read_rows(gt / csv_name, header=True)
        if rows and not {"fname", "mids"} <= set(rows[0]):
            raise PrepError(f"{gt / csv_name}: expected columns fname,labels,mids")
        for r in rows:
            wav = root / audio_dir / f"{r['fname']}.wav"
            labels = tuple(m.strip() for m in r["mids"].split(",") if m.strip())
            if csv_name == "eval.csv":
                split = "eval"
            else:
                split = {"train": "train", "val": "valid"}.get((r.get("split") or "").strip())
                if split is None:
                    result.problems.append((str(wav), f"unknown split {r.get('split')!r} in dev.csv"))
                    continue
            if not wav.is_file():
                result.problems.append((str(wav), "missing file"))
            elif unknown := [m for m in labels if m not in known]:
                result.problems.append((str(wav), f"label(s) {', '.join(unknown)} not in vocabulary.csv"))
            else:
                splits[split].append((wav, labels))

    if resample:
        audio_out = out / ("audio_16k" if sample_rate == 16000 else f"audio_{sample_rate}")
        target = {wav: audio_out / ("eval" if s == "eval" else "dev") / wav.name
                  for s, entries in splits.items() for wav, _ in entries}
        failed = resample_many(list(target.items()), sample_rate, resampler, workers, desc="FSD50K to 16 kHz")
        result.problems += failed
        bad = {Path(s) for s, _ in failed}
        splits = {s: [(target[w], labs) for w, labs in e if w not in bad] for s, e in splits.items()}

    result.label_csv = write_label_csv(out / LABEL_CSV, mids, names)
    for split, entries in splits.items():
        path = out / f"fsd50k_{split}_data.json"
        result.counts[split] = write_datafile(path, entries)
        result.datafiles[split] = path
    return result
