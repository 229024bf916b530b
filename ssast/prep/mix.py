"""A pretraining mixture of several sources, e.g. AudioSet with Librispeech.

The mixture file, read by :func:`ssast.shards.read_mixture`, is
``{"sources": [{"name": "audioset", "shards": "<shard pattern, shard folder or datafile>",
"weight": 0.7}, ...]}``. By default a source's weight is proportional to its number of clips,
which reproduces the official SSAST pretraining set (the AudioSet and Librispeech datafiles
concatenated); ``by="hours"`` weighs by duration instead, and explicit weights override either.
Shard sets are measured from the ``manifest.json`` the shard writer leaves beside them, or else
by reading the tars.
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Mapping, Sequence

from ..audio import AudioError, audio_info
from ..shards import expand_shards
from ..sources import SourceError, read_source
from .common import PrepError


def _is_remote(spec: str) -> bool:
    return ("://" in spec and not spec.startswith("file://")) or spec.startswith("pipe:")


def _is_datafile(spec: str) -> bool:
    """A JSON datafile, a CSV, or a folder of audio (a folder of .tar files is a shard set)."""
    if spec.lower().endswith((".json", ".csv", ".tsv")):
        return True
    return os.path.isdir(spec) and not any(p.name.endswith((".tar", ".tar.gz", ".tgz")) for p in Path(spec).iterdir())


def _measure_datafile(spec: str, by: str) -> float:
    try:
        items = read_source(spec, labeled=False).items
    except SourceError as e:
        raise PrepError(str(e)) from None
    if by == "clips":
        return float(len(items))
    seconds = 0.0
    for it in items:
        try:
            sr, frames, _ = audio_info(it.path)
            seconds += frames / sr
        except AudioError:
            pass  # an unreadable clip adds no time; the shard writer and sources.validate report it
    return seconds / 3600


def _manifest(folder: str) -> dict | None:
    try:
        return json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _scan_tar(path: str) -> tuple[int, float | None]:
    """(samples, seconds or None when a sample's JSON has no duration) of a webdataset tar."""
    keys, seconds = set(), 0.0
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                key, _, ext = base.partition(".")  # webdataset's key: the name up to the first dot
                keys.add((d, key))
                if ext == "json" and seconds is not None:
                    duration = json.loads(tar.extractfile(m).read() or b"{}").get("duration")
                    seconds = None if duration is None else seconds + float(duration)
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise PrepError(f"{path}: cannot read shard ({e})") from None
    return len(keys), seconds


def _measure_shards(spec: str, by: str) -> float:
    try:  # the reader's own expansion: brace patterns, '::', folders
        urls = expand_shards(spec, check=True)
    except SourceError as e:
        raise PrepError(str(e)) from None
    if any(_is_remote(u) for u in urls):
        raise PrepError(f"{spec}: remote shards cannot be measured; give the weight explicitly")
    paths = [u[len("file://"):] if u.startswith("file://") else u for u in urls]
    total = 0.0
    by_folder: dict[str, list[str]] = {}
    for p in paths:
        by_folder.setdefault(os.path.dirname(os.path.abspath(p)), []).append(os.path.basename(p))
    for folder, names in by_folder.items():
        man = _manifest(folder) or {}
        listed = {s.get("name"): s.get("clips") for s in man.get("shards", []) if isinstance(s, dict)}
        if by == "clips" and all(isinstance(listed.get(n), int) for n in names):
            total += sum(listed[n] for n in names)
        elif by == "hours" and set(names) == set(listed) and isinstance(man.get("seconds"), (int, float)):
            total += man["seconds"] / 3600
        else:
            for n in names:
                clips, seconds = _scan_tar(os.path.join(folder, n))
                if by == "hours" and seconds is None:
                    raise PrepError(f"{os.path.join(folder, n)}: a sample's JSON has no duration; "
                                    "weigh by clips or give the weights")
                total += clips if by == "clips" else seconds / 3600
    return total


def measure(spec: str, by: str = "clips") -> float:
    """The number of clips (``by="clips"``) or hours (``by="hours"``) of a source: a JSON
    datafile, CSV or folder of audio, or a local shard pattern or folder of shards."""
    if by not in ("clips", "hours"):
        raise ValueError(f"unknown weighting {by!r}: expected clips or hours")
    if _is_remote(spec):
        raise PrepError(f"{spec}: remote shards cannot be measured; give the weight explicitly")
    return _measure_datafile(spec, by) if _is_datafile(spec) else _measure_shards(spec, by)


def _written_path(spec: str, base: Path) -> str:
    """Local paths relative to the mixture file's folder when under it (as the reader resolves
    them), absolute otherwise; URLs as given."""
    if _is_remote(spec) or spec.startswith("file://"):
        return spec
    parts = [os.path.abspath(os.path.expanduser(s)) for s in spec.split("::")]
    root = os.path.abspath(base)
    return "::".join(os.path.relpath(p, root) if p.startswith(root + os.sep) else p for p in parts)


def write_mixture(out: str | os.PathLike, sources: Mapping[str, str] | Sequence[tuple[str, str]],
                  weights: Mapping[str, float] | None = None, by: str = "clips") -> dict:
    """Write the mixture file ``out`` for ``sources`` (name -> shard pattern, shard folder or
    datafile); weights are the given ones, else proportional to clips or hours, normalized to sum
    to 1. Returns the written object."""
    pairs = list(sources.items()) if isinstance(sources, Mapping) else list(sources)
    if not pairs:
        raise PrepError("a mixture needs at least one source")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise PrepError(f"source names must be unique: {', '.join(names)}")
    weights = dict(weights or {})
    if unknown := set(weights) - set(names):
        raise PrepError(f"weight(s) given for unknown source(s): {', '.join(sorted(unknown))}")
    raw = {}
    for name, spec in pairs:
        w = float(weights[name]) if name in weights else measure(spec, by)
        if not w > 0:
            raise PrepError(f"source {name} ({spec}): " + (f"weight must be positive, got {w}" if name in weights
                                                            else f"no {by} found"))
        raw[name] = w
    total = sum(raw.values())
    out = Path(out)
    mixture = {"sources": [{"name": n, "shards": _written_path(s, out.parent), "weight": round(raw[n] / total, 6)}
                           for n, s in pairs]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(mixture, indent=1) + "\n", encoding="utf-8")
    return mixture
