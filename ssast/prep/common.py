"""What the recipes share: downloads, datafile and label-CSV writers, resampling to 16 kHz."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import soundfile as sf

from ..audio import DEFAULT_SAMPLE_RATE, AudioError, load_audio
from .extract import safe_extract

LABEL_CSV = "class_labels_indices.csv"


class PrepError(ValueError):
    """A recipe that cannot go on; the message names the file or folder and the problem."""


@dataclass
class Prepared:
    """What a recipe wrote: datafiles by split, the label CSV, clip counts and skipped items."""

    name: str
    out: Path
    datafiles: dict[str, Path] = field(default_factory=dict)
    label_csv: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (item, why it was skipped)
    notes: list[str] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.name}: wrote {self.out}"]
        for split, path in self.datafiles.items():
            n = self.counts.get(split)
            lines.append(f"  {split:<18} {'' if n is None else f'{n:>8} clips  '}{path}")
        if self.label_csv is not None:
            lines.append(f"  {'labels':<18} {self.label_csv}")
        lines += [f"  {note}" for note in self.notes]
        if self.problems:
            lines.append(f"  skipped {len(self.problems)} item(s):")
            lines += [f"    {item}: {why}" for item, why in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(f"    ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def default_cache(out: str | os.PathLike) -> Path:
    return Path(out) / "downloads"


def download(url: str, dest: str | os.PathLike, progress: bool = True,
             hint: str = "pass it with --archive (or the extracted folder with --root)") -> Path:
    """Fetch ``url`` to ``dest`` unless a non-empty file is already there.

    torch.hub writes to a temporary file and renames it when complete, so an interrupted download
    never leaves a truncated archive under the final name.
    """
    from torch.hub import download_url_to_file

    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", flush=True)
    try:
        download_url_to_file(url, str(dest), progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PrepError(f"cannot download {url} ({getattr(e, 'reason', None) or e}); "
                        f"download it yourself and {hint}") from None
    return dest


def extract(archive: str | os.PathLike, dest: str | os.PathLike, name: str | None = None) -> None:
    """Extract ``archive`` into ``dest`` safely, with markers named after the archive (or
    ``name``): ``.NAME.extracting`` while it runs, ``.NAME.extracted`` once it has finished."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = name or Path(archive).name
    running, done = dest / f".{name}.extracting", dest / f".{name}.extracted"
    running.write_text(f"{archive}\n", encoding="utf-8")
    print(f"extracting {archive} -> {dest}", flush=True)
    safe_extract(archive, dest)
    done.write_text(f"{archive}\n", encoding="utf-8")
    running.unlink()


def ensure_extracted(dest: str | os.PathLike, name: str, fetch: Callable[[], Path], present: bool,
                     given: bool = False) -> bool:
    """Extract the archive ``fetch()`` returns (downloading it if need be) into ``dest`` unless
    that is done: for an archive the user ``given``, when its extraction finished before; for a
    download, when its tree is ``present`` (extracted by us or by hand). An interrupted
    extraction is always redone. Whether it extracted."""
    dest = Path(dest)
    interrupted = (dest / f".{name}.extracting").exists()
    finished = (dest / f".{name}.extracted").exists() if given else present
    if finished and not interrupted:
        return False
    extract(fetch(), dest, name)
    return True


def wav_ref(path: str | os.PathLike, json_dir: str | os.PathLike) -> str:
    """A datafile's ``wav`` value: relative to the JSON's folder when the file lies under it
    (so the folder can move), absolute otherwise. Symlinks are kept as they are."""
    path, json_dir = os.path.abspath(path), os.path.abspath(json_dir)
    if path.startswith(json_dir + os.sep):
        return Path(os.path.relpath(path, json_dir)).as_posix()
    return path


def write_datafile(path: str | os.PathLike, entries: Iterable[tuple[str | os.PathLike, Sequence[str]]]) -> int:
    """Write the official JSON datafile from (audio path, labels) pairs; the entry count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{"wav": wav_ref(p, path.parent), "labels": ",".join(labels)} for p, labels in entries]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"data": data}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(data)


def write_label_csv(path: str | os.PathLike, mids: Sequence[str], names: Sequence[str]) -> Path:
    """The official label CSV: a header row ``index,mid,display_name``, then one row per label."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(zip(mids, names)):
            w.writerow([i, mid, name])
    return path


def sox_available() -> bool:
    return shutil.which("sox") is not None


def resample_file(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE,
                  resampler: str = "auto") -> None:
    """Write ``src`` as a 16-bit mono wav at ``sample_rate``.

    ``resampler``: ``"sox"`` as the official recipes do (``sox IN -r 16000 OUT``), ``"torchaudio"``
    (what :func:`ssast.audio.load_audio` does), or ``"auto"``: sox when it is installed. A file
    sox cannot read is tried with torchaudio; a file neither reads raises :class:`AudioError`.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".part.wav")
    if resampler not in ("auto", "sox", "torchaudio"):
        raise ValueError(f"unknown resampler {resampler!r}: expected auto, sox or torchaudio")
    use_sox = resampler == "sox" or (resampler == "auto" and sox_available())
    if use_sox:
        if not sox_available():
            raise PrepError("sox is not installed (apt-get install sox), or use --resampler torchaudio")
        r = subprocess.run(["sox", "-V1", str(src), "-b", "16", "-c", "1", "-r", str(sample_rate), str(tmp)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            os.replace(tmp, dst)
            return
        tmp.unlink(missing_ok=True)
    wave = load_audio(src, sample_rate)  # AudioError names the file
    sf.write(str(tmp), wave.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")
    os.replace(tmp, dst)


def resample_many(pairs: Sequence[tuple[Path, Path]], sample_rate: int = DEFAULT_SAMPLE_RATE,
                  resampler: str = "auto", workers: int = 2, desc: str = "resampling") -> list[tuple[str, str]]:
    """Resample (src, dst) pairs in parallel, skipping those whose dst exists; the failures as
    (src, problem) pairs (the rest goes on)."""
    from tqdm import tqdm

    todo = [(s, d) for s, d in pairs if not (Path(d).is_file() and Path(d).stat().st_size > 0)]
    failures: list[tuple[str, str]] = []

    def one(pair):
        try:
            resample_file(pair[0], pair[1], sample_rate, resampler)
        except AudioError as e:
            return str(pair[0]), e.problem
        return None

    if not todo:
        return failures
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for result in tqdm(pool.map(one, todo), total=len(todo), desc=desc, unit="file", disable=None):
            if result is not None:
                failures.append(result)
    return failures


def find_dir(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root`` itself when it is named ``name``; None when neither."""
    if root.name == name and root.is_dir():
        return root
    if (root / name).is_dir():
        return root / name
    return None
