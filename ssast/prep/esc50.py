"""ESC-50: 2,000 five-second clips of 50 environmental sound classes, in 5 folds.

The archive holds ``ESC-50-master/audio/*.wav`` (44.1 kHz) and ``ESC-50-master/meta/esc50.csv``
(``filename,fold,target,category,esc10,src_file,take``). As the official AST/SSAST recipe does,
the audio is resampled to 16 kHz (with sox when installed) into ``OUT/audio_16k/``, and for each
fold k, ``esc_train_data_k.json`` holds the other four folds and ``esc_eval_data_k.json`` fold k.
Class ``target`` i gets the placeholder id ``/m/07rwj{i:02d}`` the official label CSV uses, with
the category as its display name.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..audio import DEFAULT_SAMPLE_RATE
from .common import (
    LABEL_CSV,
    Prepared,
    PrepError,
    default_cache,
    download,
    ensure_extracted,
    find_dir,
    resample_many,
    write_datafile,
    write_label_csv,
)

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_ARCHIVE = "ESC-50-master.zip"
FOLDS = (1, 2, 3, 4, 5)


def esc50_mid(index: int) -> str:
    return f"/m/07rwj{index:02d}"


def read_esc50_meta(meta_csv: str | os.PathLike) -> list[dict]:
    """Rows of ``meta/esc50.csv`` with ``fold`` and ``target`` as ints."""
    try:
        with open(meta_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PrepError(f"{meta_csv}: cannot read ESC-50 metadata ({e.strerror or e})") from None
    need = {"filename", "fold", "target", "category"}
    if not rows or not need <= set(rows[0]):
        raise PrepError(f"{meta_csv}: not the ESC-50 metadata: expected columns {','.join(sorted(need))}")
    for i, r in enumerate(rows):
        try:
            r["fold"], r["target"] = int(r["fold"]), int(r["target"])
        except ValueError:
            raise PrepError(f"{meta_csv}: row {i + 2} has a non-integer fold or target") from None
    return rows


def esc50_labels(rows: list[dict], meta_csv="esc50.csv") -> list[str]:
    """Category names in target order; an error when a target has two names or a gap."""
    names: dict[int, str] = {}
    for r in rows:
        if names.setdefault(r["target"], r["category"]) != r["category"]:
            raise PrepError(f"{meta_csv}: target {r['target']} is both {names[r['target']]!r} and {r['category']!r}")
    if sorted(names) != list(range(len(names))):
        raise PrepError(f"{meta_csv}: targets are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def prepare_esc50(out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  archive: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                  url: str = ESC50_URL, resampler: str = "auto", workers: int = 2,
                  sample_rate: int = DEFAULT_SAMPLE_RATE) -> Prepared:
    """Prepare ESC-50 in ``out``.

    The raw tree comes from ``root`` (an extracted ``ESC-50-master`` folder or its parent), else
    from ``archive``, else from ``url`` downloaded into ``cache`` (default ``out/downloads``); an
    archive is extracted into ``out``. Clips that cannot be resampled are skipped and reported.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if root is None:
        local = Path(archive) if archive is not None else Path(cache or default_cache(out)) / ESC50_ARCHIVE
        ensure_extracted(out, local.name, lambda: local if archive is not None else download(url, local),
                         present=find_dir(out, "ESC-50-master") is not None, given=archive is not None)
        root = out
    base = find_dir(Path(root), "ESC-50-master") or Path(root)
    meta_csv = base / "meta" / "esc50.csv"
    if not meta_csv.is_file():
        raise PrepError(f"{base}: not an ESC-50 tree: no meta/esc50.csv")
    rows = read_esc50_meta(meta_csv)
    categories = esc50_labels(rows, meta_csv)

    audio_16k = out / ("audio_16k" if sample_rate == 16000 else f"audio_{sample_rate}")
    result = Prepared("esc50", out)
    pairs, present = [], []
    for r in rows:
        src = base / "audio" / r["filename"]
        if not src.is_file():
            result.problems.append((str(src), "missing file"))
            continue
        pairs.append((src, audio_16k / r["filename"]))
        present.append(r)
    failed = resample_many(pairs, sample_rate, resampler, workers, desc="ESC-50 to 16 kHz")
    result.problems += failed
    bad = {Path(s).name for s, _ in failed}
    present = [r for r in present if r["filename"] not in bad]

    result.label_csv = write_label_csv(out / LABEL_CSV, [esc50_mid(i) for i in range(len(categories))], categories)
    for k in FOLDS:
        for split, rows_k in (("train", [r for r in present if r["fold"] != k]),
                              ("eval", [r for r in present if r["fold"] == k])):
            path = out / f"esc_{split}_data_{k}.json"
            n = write_datafile(path, [(audio_16k / r["filename"], [esc50_mid(r["target"])]) for r in rows_k])
            result.datafiles[f"{split}_{k}"], result.counts[f"{split}_{k}"] = path, n
    return result
