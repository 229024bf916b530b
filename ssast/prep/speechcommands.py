"""Speech Commands V2 (35 words), split as the official lists say.

The dataset is a folder per word of one-second 16 kHz wavs named ``<speaker>_nohash_<n>.wav``,
``validation_list.txt`` and ``testing_list.txt`` (paths ``word/file.wav``), and
``_background_noise_/``. As the official AST/SSAST recipe does: train is every word clip in
neither list, valid and test come from the lists; the datafiles are
``speechcommand_{train,valid,eval}_data.json`` (eval = the testing list). The label ids are
``/m/spcmdNN`` with the word as display name: for the 35 words of V2, in the order of the
official label CSV (so a model fine-tuned here has the released models' outputs); for any other
word set, word i of the sorted word folders gets ``/m/spcmd{i:02d}``. Folders ``_silence_`` and
``_unknown_`` (made by :mod:`ssast.prep.synth`, or by hand) are classes like the words;
``_background_noise_`` and ``_unlabeled_`` are not.

The lists assign whole speakers to a split by a hash of the speaker id; :func:`which_set` is that
rule (from the dataset's README), used by the generated dataset of :mod:`ssast.prep.synth`.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..registry import label_names
from .common import (
    LABEL_CSV,
    Prepared,
    PrepError,
    default_cache,
    download,
    ensure_extracted,
    write_datafile,
    write_label_csv,
)

SPEECHCOMMANDS_URL = "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SPEECHCOMMANDS_ARCHIVE = "speech_commands_v0.02.tar.gz"
SPEECHCOMMANDS_DIR = "speech_commands_v0.02"
BACKGROUND_NOISE = "_background_noise_"
VALIDATION_LIST, TESTING_LIST = "validation_list.txt", "testing_list.txt"
SILENCE, UNKNOWN = "_silence_", "_unknown_"  # optional classes: background alone, words that are not keywords
UNLABELED = "_unlabeled_"  # optional pool of unlabeled clips for pretraining
NOT_CLASSES = (BACKGROUND_NOISE, UNLABELED)
# The 35 words of V2, for reference (the recipe uses the word folders it finds).
SPEECHCOMMANDS_V2_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
_MAX_PER_CLASS = 2 ** 27 - 1  # the hashing modulus of the official split rule


def speechcommands_mid(index: int) -> str:
    return f"/m/spcmd{index:02d}"


def label_ids(words: list[str]) -> dict[str, str]:
    """word -> label id: the official CSV's ids for the 35 words of V2, else by sorted position."""
    if sorted(words) == sorted(SPEECHCOMMANDS_V2_WORDS):
        ids, names = label_names("speechcommands")
        return dict(zip(names, ids))
    return {w: speechcommands_mid(i) for i, w in enumerate(sorted(words))}


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """``"validation"``, ``"testing"`` or ``"training"`` for a clip, by the official rule: the
    SHA-1 of the speaker part of the name (before ``_nohash_``) mapped to a percentage, so that
    all clips of a speaker fall in the same split."""
    speaker = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    h = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percent = (h % (_MAX_PER_CLASS + 1)) * (100.0 / _MAX_PER_CLASS)
    if percent < validation_percentage:
        return "validation"
    if percent < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PrepError(f"{path}: cannot read ({e.strerror or e})") from None
    return [ln.strip().replace("\\", "/") for ln in lines if ln.strip()]


def is_speechcommands_tree(root: str | os.PathLike) -> bool:
    return (Path(root) / VALIDATION_LIST).is_file() and (Path(root) / TESTING_LIST).is_file()


def prepare_speechcommands(out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                           archive: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                           url: str = SPEECHCOMMANDS_URL) -> Prepared:
    """Prepare Speech Commands V2 in ``out``.

    The tree comes from ``root`` (the folder holding the word folders and the two lists), else
    from ``archive``, else from ``url`` downloaded into ``cache`` (default ``out/downloads``); an
    archive is extracted into ``out/speech_commands_v0.02``. List entries whose file is missing
    are skipped and reported.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if root is None:
        root = out / SPEECHCOMMANDS_DIR
        local = Path(archive) if archive is not None else Path(cache or default_cache(out)) / SPEECHCOMMANDS_ARCHIVE
        # The official archive has no top-level folder: it is extracted into OUT/speech_commands_v0.02.
        ensure_extracted(root, local.name, lambda: local if archive is not None else download(url, local),
                         present=is_speechcommands_tree(root), given=archive is not None)
    root = Path(root)
    if not is_speechcommands_tree(root):
        raise PrepError(f"{root}: not a Speech Commands tree: expected {VALIDATION_LIST} and {TESTING_LIST} "
                        "beside the word folders")
    words = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and d.name not in NOT_CLASSES and not d.name.startswith("."))
    if not words:
        raise PrepError(f"{root}: no word folders")
    mid = label_ids(words)
    words = sorted(words, key=mid.get)

    result = Prepared("speechcommands", out)
    all_clips = {f"{w}/{p.name}" for w in words for p in (root / w).iterdir()
                 if p.is_file() and p.suffix.lower() == ".wav"}
    splits: dict[str, list[str]] = {}
    for split, listfile in (("valid", VALIDATION_LIST), ("eval", TESTING_LIST)):
        kept = []
        for rel in _read_list(root / listfile):
            if rel.split("/")[0] not in mid:
                result.problems.append((f"{listfile}: {rel}", "not in a word folder"))
            elif rel not in all_clips:
                result.problems.append((f"{listfile}: {rel}", "missing file"))
            else:
                kept.append(rel)
        splits[split] = kept
    held_out = set(splits["valid"]) | set(splits["eval"])
    splits = {"train": sorted(all_clips - held_out), **splits}

    result.label_csv = write_label_csv(out / LABEL_CSV, [mid[w] for w in words], words)
    for split, rels in splits.items():
        path = out / f"speechcommand_{split}_data.json"
        result.counts[split] = write_datafile(path, [(root / rel, [mid[rel.split("/")[0]]]) for rel in rels])
        result.datafiles[split] = path
    result.notes.append(f"{len(words)} words: {', '.join(words[:12])}{', ...' if len(words) > 12 else ''}")
    return result
