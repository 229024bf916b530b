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
(missing files, unknown labels, unreadable audio, and what a folder scan found but could not use:
broken symbolic links, folders named like audio files, folders that cannot be listed) up front.
The label CSV is checked as it is read: a repeated mid or index, a non-integer index, an empty
mid, missing columns or bytes that are not UTF-8 raise :class:`SourceError` naming the file and
the line.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .audio import AudioError, audio_info, scan_audio

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
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, problem) a folder scan found

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


def _decode_text(path, what: str) -> str:
    """A text file's contents; a byte that is not UTF-8 is reported with its line number."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SourceError(path, f"cannot read {what} ({(e.strerror or str(e)).lower()})") from None
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as spreadsheet programs write, is fine
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SourceError(path, f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                                f"save the {what} as UTF-8") from None


def _field(fields: list[str], columns: dict[str, int], name: str) -> str:
    i = columns.get(name)
    return fields[i].strip() if i is not None and i < len(fields) else ""


def read_label_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The official label CSV: (mids in index order, display names).

    Checked line by line: the header names ``index`` and ``mid`` (``display_name`` optional),
    every index is a non-negative integer, every mid is non-empty, and no index or mid appears
    twice; a problem raises :class:`SourceError` naming the file and the line.
    """
    reader = csv.reader(io.StringIO(_decode_text(path, "label CSV"), newline=""))
    expected = "expected a header row with columns index,mid,display_name"
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("index", "mid") if c not in header]
        if missing:
            found = ",".join(header) or "nothing"
            raise SourceError(path, f"line 1: not a label CSV: no {' or '.join(missing)} column "
                                    f"({expected}; found {found})")
        col = {name: i for i, name in reversed(list(enumerate(header)))}  # first column of each name
        rows, mid_line, index_line = [], {}, {}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue  # a blank line
            index, mid = _field(fields, col, "index"), _field(fields, col, "mid")
            if not re.fullmatch(r"[0-9]+", index):
                raise SourceError(path, f"line {line}: index {index!r} is not an integer (0, 1, 2, ...)")
            if not mid:
                raise SourceError(path, f"line {line}: empty mid (label id)")
            if mid in mid_line:
                raise SourceError(path, f"line {line}: mid {mid!r} repeats line {mid_line[mid]}")
            if int(index) in index_line:
                raise SourceError(path, f"line {line}: index {int(index)} repeats line {index_line[int(index)]}")
            mid_line[mid], index_line[int(index)] = line, line
            rows.append((int(index), mid, _field(fields, col, "display_name") or mid))
    except csv.Error as e:
        raise SourceError(path, f"line {reader.line_num}: not a CSV ({e})") from None
    if not rows:
        raise SourceError(path, f"no labels: the label CSV has a header row only ({expected}, then one row per label)")
    rows.sort()
    return [mid for _, mid, _ in rows], [name for _, _, name in rows]


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


def _read_folder(path: Path, labeled: bool | None) -> Source:
    top_audio, top_problems = scan_audio(path, recursive=False)
    try:
        subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise SourceError(path, f"cannot list the folder ({(e.strerror or str(e)).lower()})") from None
    scans = {d.name: scan_audio(d) for d in subdirs}
    per_class = {k: files for k, (files, _) in scans.items() if files}
    if labeled is None:
        labeled = bool(per_class) and not top_audio
    if labeled:
        if not per_class:
            raise SourceError(path, "no class subfolders with audio files" + _problems_note(
                [q for _, probs in scans.values() for q in probs]))
        classes = sorted(per_class)
        items = [Item(str(p), (c,)) for c in classes for p in per_class[c]]
        # A folder named like an audio file at the top is a class here, not a problem.
        problems = [q for _, probs in scans.values() for q in probs]
        problems += [q for q in top_problems if q[1] != "is a directory"]
        return Source(str(path), "folder-per-class", items, classes, list(classes), problems=sorted(problems))
    files, problems = scan_audio(path)
    if not files:
        looked = ", ".join(e[1:] for e in (".wav", ".flac", ".ogg", ".mp3"))
        raise SourceError(path, f"no audio files found (looked for {looked}, ...)" + _problems_note(problems))
    return Source(str(path), "folder", [Item(str(p)) for p in files], problems=problems)


def _problems_note(problems: list[tuple[str, str]], limit: int = 5) -> str:
    if not problems:
        return ""
    shown = "; ".join(f"{p}: {q}" for p, q in problems[:limit])
    return f"; found but not usable: {shown}" + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


def read_source(src: str | os.PathLike, label_csv: str | os.PathLike | None = None,
                labeled: bool | None = None) -> Source:
    """Read a JSON datafile, a CSV or a folder (see the module docstring)."""
    path = Path(src)
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        raise SourceError(src, "no such file or folder") from None
    except OSError as e:
        raise SourceError(src, (e.strerror or str(e)).lower()) from None
    if is_dir:
        return _read_folder(path, labeled)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, label_csv)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, label_csv)
    raise SourceError(src, "unknown data source: expected a .json datafile, a .csv or a folder")


def _file_problem(path: str) -> str | None:
    """Why ``path`` is not a file that can be opened, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "missing file"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def validate(source: Source, check_audio: bool = True) -> Report:
    """Check every entry: the file exists, its labels are known, its header is readable."""
    report = Report(bad=list(source.problems))
    known = source.label_index()
    for it in source.items:
        problem = _file_problem(it.path)
        if problem is None and source.labeled and (unknown := [lab for lab in it.labels if lab not in known]):
            problem = f"unknown label(s) {', '.join(unknown)}"
        elif problem is None and check_audio:
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
