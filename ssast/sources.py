"""Where clips and labels come from: the forms a user's data arrives in.

``read_source(SRC)`` accepts
- the official JSON datafile ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}`` with its
  label CSV (``index,mid,display_name``, header row) given as ``label_csv`` or found beside it
  as ``class_labels_indices.csv``;
- a CSV with a header row: a path column (``path``, ``wav``, ``file`` or ``filename``) and,
  optionally, a label column (``label`` or ``labels``; several labels separated by ``,`` or ``;``);
- a folder with one subfolder of audio per class (folder-per-class), or any other folder of audio
  (unlabeled; searched recursively).

Relative paths are resolved against the datafile's folder. :func:`validate` reports bad entries
(missing files, unknown labels, unreadable audio) up front.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .audio import AudioError, audio_info, is_audio_file

PATH_COLUMNS = ("path", "wav", "file", "filename", "audio")
LABEL_COLUMNS = ("labels", "label", "class", "category")


class SourceError(ValueError):
    """A datafile or folder that cannot be read; the message names it and the problem."""

    def __init__(self, name, problem: str):
        self.name, self.problem = str(name), problem
        super().__init__(f"{name}: {problem}")


@dataclass
class Item:
    path: str
    labels: tuple[str, ...] = ()


@dataclass
class Source:
    """A list of clips with their labels, and the label vocabulary (None when unlabeled)."""

    name: str
    kind: str  # "json", "csv", "folder-per-class", "folder"
    items: list[Item]
    labels: list[str] | None = None  # label ids in index order (AudioSet mids, class names)
    display_names: list[str] | None = None

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels or [])}


@dataclass
class Report:
    """Bad entries found by :func:`validate`: (path, problem) pairs; the good items."""

    good: list[Item] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, limit: int = 20) -> str:
        lines = [f"{len(self.good)} usable clips, {len(self.bad)} bad entries"]
        lines += [f"  {p}: {problem}" for p, problem in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"  ... and {len(self.bad) - limit} more")
        return "\n".join(lines)


def _split_labels(text: str) -> tuple[str, ...]:
    text = (text or "").replace(";", ",")
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _resolve(base: Path, p: str) -> str:
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else base / q)


def read_label_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The official label CSV: (mids in index order, display names)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SourceError(path, f"cannot read label CSV ({e.strerror or e})") from None
    if not rows or not {"index", "mid"} <= set(rows[0]):
        raise SourceError(path, "not a label CSV: expected a header row with columns index,mid,display_name")
    try:
        rows.sort(key=lambda r: int(r["index"]))
    except ValueError:
        raise SourceError(path, "label CSV has a non-integer index") from None
    return [r["mid"] for r in rows], [r.get("display_name") or r["mid"] for r in rows]


def _read_json(path: Path, label_csv) -> Source:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(path, f"not a JSON datafile ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise SourceError(path, 'not a datafile: expected {"data": [{"wav": ..., "labels": ...}, ...]}')
    items = []
    for i, entry in enumerate(obj["data"]):
        if not isinstance(entry, dict) or "wav" not in entry:
            raise SourceError(path, f"entry {i} has no 'wav' field")
        items.append(Item(_resolve(path.parent, str(entry["wav"])), _split_labels(str(entry.get("labels", "")))))
    if label_csv is None and (path.parent / "class_labels_indices.csv").exists():
        label_csv = path.parent / "class_labels_indices.csv"
    labels = names = None
    if label_csv is not None:
        labels, names = read_label_csv(label_csv)
    elif any(it.labels for it in items):
        labels = sorted({lab for it in items for lab in it.labels})
        names = list(labels)
    return Source(str(path), "json", items, labels, names)


def _read_csv(path: Path, label_csv) -> Source:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(path, f"cannot read CSV ({e})") from None
    fields = {h.strip().lower(): h for h in (rows[0].keys() if rows else [])}
    pcol = next((fields[c] for c in PATH_COLUMNS if c in fields), None)
    if pcol is None:
        raise SourceError(path, f"no path column: the header row must name one of {', '.join(PATH_COLUMNS)} (found {', '.join(header) or 'nothing'})")
    lcol = next((fields[c] for c in LABEL_COLUMNS if c in fields), None)
    items = [Item(_resolve(path.parent, r[pcol].strip()), _split_labels(r[lcol]) if lcol else ()) for r in rows if r.get(pcol)]
    labels = names = None
    if label_csv is not None:
        labels, names = read_label_csv(label_csv)
    elif lcol is not None:
        labels = sorted({lab for it in items for lab in it.labels})
        names = list(labels)
    return Source(str(path), "csv", items, labels, names)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_audio_file(p))


def _read_folder(path: Path, labeled: bool | None) -> Source:
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    top_audio = [p for p in path.iterdir() if p.is_file() and is_audio_file(p)]
    per_class = {d.name: _audio_files(d) for d in subdirs}
    per_class = {k: v for k, v in per_class.items() if v}
    if labeled is None:
        labeled = bool(per_class) and not top_audio
    if labeled:
        if not per_class:
            raise SourceError(path, "no class subfolders with audio files")
        classes = sorted(per_class)
        items = [Item(str(p), (c,)) for c in classes for p in per_class[c]]
        return Source(str(path), "folder-per-class", items, classes, list(classes))
    items = [Item(str(p)) for p in _audio_files(path)]
    if not items:
        raise SourceError(path, "no audio files found (looked for " + ", ".join(e[1:] for e in ('.wav', '.flac', '.ogg', '.mp3')) + ", ...)")
    return Source(str(path), "folder", items)


def read_source(src: str | os.PathLike, label_csv: str | os.PathLike | None = None,
                labeled: bool | None = None) -> Source:
    """Read a JSON datafile, a CSV or a folder (see the module docstring)."""
    path = Path(src)
    if not path.exists():
        raise SourceError(src, "no such file or folder")
    if path.is_dir():
        return _read_folder(path, labeled)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, label_csv)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, label_csv)
    raise SourceError(src, "unknown data source: expected a .json datafile, a .csv or a folder")


def validate(source: Source, check_audio: bool = True) -> Report:
    """Check every entry: the file exists, its labels are known, its header is readable."""
    report = Report()
    known = source.label_index()
    for it in source.items:
        problem = None
        if not os.path.isfile(it.path):
            problem = "missing file"
        elif source.labeled and (unknown := [lab for lab in it.labels if lab not in known]):
            problem = f"unknown label(s) {', '.join(unknown)}"
        elif check_audio:
            try:
                sr, frames, _ = audio_info(it.path)
                if frames == 0:
                    problem = "empty audio (0 samples)"
            except AudioError as e:
                problem = e.problem
        if problem:
            report.bad.append((it.path, problem))
        else:
            report.good.append(it)
    return report


def match_labels(source: Source, ids: Sequence[str], names: Sequence[str] | None = None,
                 what: str = "the model") -> list[int]:
    """For each label of ``source`` (in its order), its position in a vocabulary.

    The vocabulary is ``ids`` (label ids in output order) with their display ``names``; a
    source label matches by id or by display name, on either side (a model that stores display
    names matches a datafile's mids through the datafile's label CSV). Raises SourceError naming
    the labels that do not match.
    """
    index: dict[str, int] = {}
    for i, key in enumerate(ids):
        index.setdefault(str(key), i)
    for i, key in enumerate(names or ()):
        index.setdefault(str(key), i)
    data = list(source.labels or [])
    shown = list(source.display_names or data)
    out, missing = [], []
    for lab, disp in zip(data, shown):
        pos = index.get(lab, index.get(disp))
        if pos is None:
            missing.append(lab if lab == disp else f"{disp} ({lab})")
        out.append(pos)
    if missing:
        raise SourceError(source.name, f"{_show(missing)} missing from the labels of {what}. Data labels: "
                                       f"{_show(shown)}. Labels of {what}: {_show(list(names or ids))}")
    return out


def _show(names: Sequence[str], limit: int = 10) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more
