"""AudioSet from audio the user already has, with the official segment CSVs.

AudioSet is distributed as YouTube ids, not audio, so this recipe cannot download clips. It reads
the official segment CSVs (three ``#`` comment lines, then ``YTID, start_seconds, end_seconds,
"label1,label2"``) and the official ``class_labels_indices.csv`` (downloaded from Google's
storage when not given), finds each segment's audio in the user's folders by YouTube id, and
writes ``<split>_data.json`` for the segments found, ``full_train_data.json`` (balanced +
unbalanced: AudioSet-2M, what SSAST pretrains on) when both train splits are asked for, and
``missing_<split>.txt`` listing the segments without audio.

Audio files are matched by name: ``{YTID}``, ``Y{YTID}`` (the common dump naming), each
optionally followed by ``_{start}`` or ``_{start}_{end}`` (seconds, with or without decimals, or
milliseconds), with any audio extension.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ..audio import DEFAULT_SAMPLE_RATE, AudioError, audio_info, is_audio_file
from ..sources import read_label_csv
from .common import LABEL_CSV, Prepared, PrepError, default_cache, download, resample_many, write_datafile

AUDIOSET_CSV_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/{name}"
AUDIOSET_SPLITS = {
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
# YouTube ids are 11 characters of [A-Za-z0-9_-]; they may themselves begin with "Y".
_NAME = re.compile(r"^Y?(?P<ytid>[A-Za-z0-9_-]{11})(?:_(?P<start>\d+(?:\.\d+)?)(?:[_-]\d+(?:\.\d+)?)?)?$")


def read_segments(path: str | os.PathLike) -> list[tuple[str, float, float, tuple[str, ...]]]:
    """(YTID, start, end, labels) for each row of an official segment CSV."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 4:
                    raise PrepError(f"{path}: line {lineno}: expected YTID, start_seconds, end_seconds, \"labels\"")
                try:
                    start, end = float(row[1]), float(row[2])
                except ValueError:
                    raise PrepError(f"{path}: line {lineno}: start/end seconds are not numbers") from None
                labels = tuple(m.strip() for m in row[3].split(",") if m.strip())
                rows.append((row[0].strip(), start, end, labels))
    except OSError as e:
        raise PrepError(f"{path}: cannot read segment CSV ({e.strerror or e})") from None
    return rows


def index_audio(folders: Sequence[str | os.PathLike]) -> dict[str, list[tuple[float | None, Path]]]:
    """YTID -> [(start seconds from the name or None, path)] for every audio file under ``folders``."""
    index: dict[str, list[tuple[float | None, Path]]] = defaultdict(list)
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise PrepError(f"{folder}: no such audio folder")
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if not is_audio_file(name):
                    continue
                m = _NAME.match(os.path.splitext(name)[0])
                if m:
                    start = float(m["start"]) if m["start"] else None
                    index[m["ytid"]].append((start, Path(dirpath) / name))
    return index


def _pick(candidates: list[tuple[float | None, Path]], start: float) -> Path:
    """The file of the segment starting at ``start`` (names in seconds or milliseconds)."""
    if len(candidates) > 1:
        for s, p in candidates:
            if s is not None and (abs(s - start) < 0.5 or abs(s / 1000 - start) < 0.5):
                return p
    return sorted(candidates, key=lambda c: str(c[1]))[0][1]


def prepare_audioset(out: str | os.PathLike, audio: Sequence[str | os.PathLike], *,
                     splits: Sequence[str] = tuple(AUDIOSET_SPLITS), csv_dir: str | os.PathLike | None = None,
                     label_csv: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                     url: str = AUDIOSET_CSV_URL, check_audio: bool = False, resample: bool = False,
                     resampler: str = "auto", workers: int = 2, sample_rate: int = DEFAULT_SAMPLE_RATE) -> Prepared:
    """Prepare AudioSet datafiles in ``out`` for the clips found under the ``audio`` folders.

    The segment CSVs and the label CSV are taken from ``csv_dir`` (or ``label_csv``) when there,
    else downloaded from ``url`` (``{name}`` replaced) into ``cache`` (default ``out/downloads``).
    ``check_audio`` reads every file's header and skips unreadable ones; ``resample`` writes
    16 kHz mono wavs into ``out/audio_16k/`` and points the datafiles at them.
    """
    unknown = [s for s in splits if s not in AUDIOSET_SPLITS]
    if unknown:
        raise PrepError(f"unknown AudioSet split(s) {', '.join(unknown)}: choose from {', '.join(AUDIOSET_SPLITS)}")
    if isinstance(audio, (str, os.PathLike)):
        audio = [audio]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache or default_cache(out))

    def official(name: str) -> Path:
        if csv_dir is not None and (Path(csv_dir) / name).is_file():
            return Path(csv_dir) / name
        return download(url.format(name=name), cache / name, hint="pass their folder with --csv-dir")

    labels_src = Path(label_csv) if label_csv is not None else official(LABEL_CSV)
    mids, _ = read_label_csv(labels_src)
    known = set(mids)
    if labels_src.resolve() != (out / LABEL_CSV).resolve():
        shutil.copyfile(labels_src, out / LABEL_CSV)

    index = index_audio(audio)
    result = Prepared("audioset", out, label_csv=out / LABEL_CSV)
    found: dict[str, list[tuple[Path, tuple[str, ...]]]] = {}
    for split in splits:
        segments = read_segments(official(AUDIOSET_SPLITS[split]))
        entries, missing = [], []
        for ytid, start, end, labels in segments:
            if ytid not in index:
                missing.append(f"{ytid},{start:.3f},{end:.3f}")
                continue
            path = _pick(index[ytid], start)
            if unknown_labels := [lab for lab in labels if lab not in known]:
                result.problems.append((str(path), f"unknown label(s) {', '.join(unknown_labels)} "
                                                   f"in {AUDIOSET_SPLITS[split]}"))
                continue
            entries.append((path, labels))
        (out / f"missing_{split}.txt").write_text("".join(m + "\n" for m in missing), encoding="utf-8")
        result.notes.append(f"{split}: {len(entries)} of {len(segments)} segments have audio "
                            f"({len(missing)} missing, listed in missing_{split}.txt)")
        found[split] = entries

    if check_audio:
        for split, entries in found.items():
            good = []
            for path, labels in entries:
                try:
                    if audio_info(path)[1] == 0:
                        raise AudioError(path, "empty audio (0 samples)")
                    good.append((path, labels))
                except AudioError as e:
                    result.problems.append((str(path), e.problem))
            found[split] = good
    if resample:
        audio_dir = out / ("audio_16k" if sample_rate == 16000 else f"audio_{sample_rate}")
        target = {p: audio_dir / (p.stem + ".wav") for entries in found.values() for p, _ in entries}
        failed = resample_many(sorted(target.items()), sample_rate, resampler, workers, desc="AudioSet to 16 kHz")
        result.problems += failed
        bad = {Path(s) for s, _ in failed}
        found = {s: [(target[p], labs) for p, labs in e if p not in bad] for s, e in found.items()}

    for split, entries in found.items():
        path = out / f"{split}_data.json"
        result.counts[split] = write_datafile(path, entries)
        result.datafiles[split] = path
    if "balanced_train" in found and "unbalanced_train" in found:
        seen, full = set(), []
        for path, labels in found["balanced_train"] + found["unbalanced_train"]:
            if path not in seen:
                seen.add(path)
                full.append((path, labels))
        path = out / "full_train_data.json"
        result.counts["full_train"] = write_datafile(path, full)
        result.datafiles["full_train"] = path
    return result
