"""Running a fine-tuned model over recordings: sliding windows, scores, detections, summaries.

Recordings are streamed and cut into windows of ``window`` seconds every ``hop`` seconds by
:mod:`ssast.stream` (a window that runs past the end of a file is marked ``padded``: its fbank
is zero-padded to the model's input length, as the recipes pad clips shorter than the input).
Windows from one or more files are batched and scored on the device under
``torch.inference_mode``. Scores are probabilities: sigmoid for multi-label models, softmax for
single-label ones (:func:`resolve_activation`). Per label, windows scoring at least the
threshold whose time spans overlap or touch (or lie within ``merge_gap`` seconds) are merged
into one detection. Each file gets a summary: duration, per label whether and when it was
detected, and the file's metadata (AudioMoth's device id, time, gain, battery and temperature
from the WAV comment, when present).

Results are written as CSV, JSON or Raven selection tables (:func:`write_csv`,
:func:`write_json`, :func:`write_raven`). A file that cannot be read is reported and skipped;
the run goes on with the others.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .audio import AudioError
from .device import default_device
from .features import FeatureExtractor, frame_geometry, num_frames
from .files import atomic_write, json_text
from .loading import Loaded, load
from .metrics import probabilities
from .stream import FileEnd, FileFailed, FileStart, Recording, Rows, collect_inputs, run_windows, window_spans

ACTIVATIONS = ("auto", "sigmoid", "softmax")
FORMATS = ("csv", "json", "raven")
# Raven Pro's selection-table columns: its own seven, the annotation, the detection's scores, then
# the file measurements (Begin Path and File Offset make it a "sound selection table" that opens
# its sound file).
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Annotation", "Max Score", "Mean Score", "Windows", "Begin Path",
                 "File Offset (s)", "Begin File")


# ----------------------------------------------------------------------------- detections

@dataclass
class Detection:
    """Consecutive windows of one label at or above the threshold, merged."""

    label: str
    label_index: int
    start: float  # seconds from the start of the file
    end: float
    max_score: float
    mean_score: float
    windows: int

    def to_dict(self) -> dict:
        return {"label": self.label, "label_index": self.label_index, "start": _t(self.start), "end": _t(self.end),
                "max_score": _s(self.max_score), "mean_score": _s(self.mean_score), "windows": self.windows}


def merge_detections(window_index, label_index, score, starts, ends, labels: Sequence[str] | None = None,
                     gap: float = 0.0) -> list[Detection]:
    """Merge above-threshold hits into detections, per label.

    ``window_index``, ``label_index``, ``score``: one entry per (window, label) pair at or above
    the threshold; ``starts``/``ends``: every window's span in seconds, in time order. Hits of
    one label are merged while the next window starts no later than ``gap`` seconds after the
    current detection's end (overlapping or touching windows with ``gap=0``). Detections come
    sorted by label index, then time.
    """
    w = np.asarray(window_index, dtype=np.int64)
    lab = np.asarray(label_index, dtype=np.int64)
    sc = np.asarray(score, dtype=np.float64)
    if not w.size:
        return []
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    order = np.lexsort((w, lab))  # by label, then window
    w, lab, sc = w[order], lab[order], sc[order]
    s, e = starts[w], ends[w]
    # Window ends never decrease (equal windows, a shorter last one), so the previous hit's end is the run's end.
    new = np.ones(w.size, dtype=bool)
    new[1:] = (lab[1:] != lab[:-1]) | (s[1:] > e[:-1] + gap)
    first = np.flatnonzero(new)
    last = np.append(first[1:], w.size) - 1
    count = np.diff(np.append(first, w.size))
    mx = np.maximum.reduceat(sc, first)
    mean = np.add.reduceat(sc, first) / count
    return [Detection(labels[int(lab[i])] if labels is not None else str(int(lab[i])), int(lab[i]), float(s[i]),
                      float(e[j]), float(m), float(a), int(c))
            for i, j, m, a, c in zip(first, last, mx, mean, count)]


def detect(scores, starts, ends, threshold: float, labels: Sequence[str] | None = None,
           gap: float = 0.0) -> list[Detection]:
    """Detections from dense per-window scores (windows, labels): see :func:`merge_detections`."""
    scores = np.asarray(scores)
    w, lab = np.nonzero(scores >= threshold)
    return merge_detections(w, lab, scores[w, lab], starts, ends, labels, gap)


# ----------------------------------------------------------------------------- results

def _t(x: float) -> float:
    return round(float(x), 6)


def _s(x: float) -> float:
    return round(float(x), 6)


@dataclass
class FileResult:
    """Everything predicted for one file.

    Window arrays have one row per window: ``starts``/``lengths`` in samples at
    ``sample_rate``, ``top_index``/``top_score`` (windows, k). ``max_score`` (labels,) is each
    label's highest window score. ``scores`` (windows, labels) is kept only on request.
    """

    path: str
    sample_rate: int
    window: int  # samples
    labels: list[str]
    starts: np.ndarray
    lengths: np.ndarray
    top_index: np.ndarray
    top_score: np.ndarray
    max_score: np.ndarray
    detections: list[Detection]
    threshold: float
    info: dict = field(default_factory=dict)
    num_samples: int = 0
    scores: np.ndarray | None = None
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def start_times(self) -> np.ndarray:
        return self.starts / self.sample_rate

    @property
    def end_times(self) -> np.ndarray:
        return (self.starts + self.lengths) / self.sample_rate

    @property
    def padded(self) -> np.ndarray:
        return self.lengths < self.window

    @property
    def recorded_at(self) -> dt.datetime | None:
        t = self.info.get("audiomoth", {}).get("recorded_at")
        return dt.datetime.fromisoformat(t) if t else None

    def clock(self, seconds: float) -> str | None:
        """ISO time of an offset into the file, when the recording's start time is known."""
        t0 = self.recorded_at
        return None if t0 is None else (t0 + dt.timedelta(seconds=float(seconds))).isoformat()

    def windows(self) -> list[dict]:
        st, en, pad = self.start_times, self.end_times, self.padded
        return [{"index": i, "start": _t(st[i]), "end": _t(en[i]), "padded": bool(pad[i]),
                 "top": [{"label": self.labels[j], "score": _s(s)} for j, s in zip(self.top_index[i], self.top_score[i])]}
                for i in range(len(st))]

    def summary(self) -> dict:
        by_label: dict[int, list[Detection]] = {}
        for d in self.detections:
            by_label.setdefault(d.label_index, []).append(d)
        per_label = {}
        for i, name in enumerate(self.labels):
            ds = by_label.get(i, [])
            entry = {"detected": bool(ds), "max_score": _s(self.max_score[i]), "detections": len(ds),
                     "windows": sum(d.windows for d in ds)}
            if ds:
                entry.update(first=_t(ds[0].start), last=_t(ds[-1].end))
                if self.recorded_at is not None:
                    entry.update(first_time=self.clock(ds[0].start), last_time=self.clock(ds[-1].end))
            per_label[name] = entry
        return {"duration": _t(self.duration), "windows": int(len(self.starts)),
                "detected": [self.labels[i] for i in sorted(by_label)], "labels": per_label,
                "metadata": self.info}

    def to_dict(self) -> dict:
        out = {"path": self.path, "duration": _t(self.duration), "threshold": self.threshold, "summary": self.summary(),
               "detections": [d.to_dict() for d in self.detections], "windows": self.windows()}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class PredictionRun:
    """The results of one run: per-file results, unreadable files, and the settings used."""

    files: list[FileResult]
    errors: list[dict]
    labels: list[str]
    settings: dict

    def to_dict(self) -> dict:
        return {"settings": self.settings, "labels": self.labels, "files": [f.to_dict() for f in self.files],
                "errors": self.errors}



# ----------------------------------------------------------------------------- the model

def resolve_activation(activation: str, multilabel: bool | None) -> str:
    """``sigmoid`` or ``softmax`` for ``activation='auto'`` (or the one asked for).

    ``auto``: sigmoid for a multi-label model (:attr:`ssast.loading.Loaded.multilabel`: from the
    checkpoint, or known for released AudioSet models), softmax otherwise.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    if activation != "auto":
        return activation
    return "sigmoid" if multilabel else "softmax"


class Predictor:
    """A loaded fine-tuned model (:func:`ssast.load`) on a device, scoring batches of windows."""

    def __init__(self, loaded: Loaded, *, activation: str = "auto", device: str | torch.device | None = None,
                 bf16: bool = False):
        self.loaded = loaded.require_classifier()
        self.features = loaded.features
        self.extractor = FeatureExtractor(self.features)
        self.labels = loaded.label_names()
        self.activation = resolve_activation(activation, loaded.multilabel)
        self.device = default_device(device)
        self.model = loaded.model.eval().to(self.device)
        self.bf16 = bf16

    @classmethod
    def from_checkpoint(cls, source, *, activation: str = "auto", device=None, bf16: bool = False,
                        **options) -> "Predictor":
        """A predictor from anything :func:`ssast.load` takes; ``options`` are its overrides."""
        return cls(load(source, **options), activation=activation, device=device, bf16=bf16)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def input_seconds(self) -> float:
        """Seconds of audio in the model's input: target_length frames at the frame shift."""
        return self.features.target_length * self.features.frame_shift_ms / 1000

    @property
    def min_samples(self) -> int:
        """Samples of one analysis frame: the shortest audio that gives features."""
        return frame_geometry(self.sample_rate, self.features.frame_length_ms, self.features.frame_shift_ms)[0]

    @torch.inference_mode()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, labels), float32 on the device, of (B, samples) windows at ``sample_rate``.

        ``lengths``: the real samples of zero-padded windows; their fbank is padded as the recipes pad
        short clips.
        """
        x = waves.to(self.device, non_blocking=True)
        feats = self.extractor(x, lengths=lengths)  # (B, T, F)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(feats)
        return probabilities(logits, self.activation == "sigmoid")


# ----------------------------------------------------------------------------- the run

class _FileScores:
    """What is kept of one file's windows: top-k, the hits above the threshold, each label's
    maximum, and (on request) every score."""

    def __init__(self, path: str, info: dict, num_labels: int, keep_scores: bool):
        self.path, self.info = path, info
        self.starts: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.top_i: list[torch.Tensor] = []
        self.top_s: list[torch.Tensor] = []
        self.hits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.scores: list[torch.Tensor] | None = [] if keep_scores else None
        self.max = torch.zeros(num_labels)

    def add(self, rows: Rows, k: int, threshold: float) -> None:
        scores = rows.outputs["scores"]  # (n, L)
        ts, ti = scores.topk(k, dim=-1)  # (n, k)
        hit_w, hit_l = (scores >= threshold).nonzero(as_tuple=True)
        self.hits.append((hit_w + rows.first, hit_l, scores[hit_w, hit_l]))
        self.starts.append(rows.starts)
        self.lengths.append(rows.lengths)
        self.top_i.append(ti)
        self.top_s.append(ts)
        self.max = torch.maximum(self.max, scores.max(dim=0).values)
        if self.scores is not None:
            self.scores.append(scores.half())


def predict(predictor: Predictor, inputs: Iterable[str | os.PathLike] = (), *, window: float | None = None,
            hop: float | None = None, threshold: float = 0.5, top_k: int = 5, batch_size: int = 16,
            recursive: bool = True, list_file: str | os.PathLike | None = None, merge_gap: float = 0.0,
            keep_scores: bool = False, progress: bool = True, read_ahead: bool = True,
            block_seconds: float = 60.0, on_file: Callable[[FileResult], None] | None = None) -> PredictionRun:
    """Score every window of every file; see the module docstring.

    ``inputs``: audio files and folders; ``list_file``: a text file of more paths (see
    :func:`ssast.stream.collect_inputs`). ``window``/``hop`` in seconds (default: the model's input
    length, and half of it). ``keep_scores``: also keep each window's full score vector (float16)
    in :attr:`FileResult.scores`, as the timeline plot uses. ``on_file`` is called with each
    file's result as soon as the file is done. Files that cannot be read are listed in
    ``errors`` (and on stderr) and skipped; a file that fails part-way keeps the windows read
    before the failure and carries the error.
    """
    sr = predictor.sample_rate
    window_s = predictor.input_seconds if window is None else float(window)
    hop_s = window_s / 2 if hop is None else float(hop)
    win, hp = round(window_s * sr), round(hop_s * sr)
    if win < predictor.min_samples:
        raise ValueError(f"window of {window_s} s is shorter than one analysis frame "
                         f"({predictor.features.frame_length_ms} ms)")
    if hp < 1:
        raise ValueError(f"hop must be positive, got {hop_s} s")
    f = predictor.features
    frames = num_frames(win, sr, f.frame_length_ms, f.frame_shift_ms)
    if frames > f.target_length:
        raise ValueError(f"a window of {window_s} s gives {frames} frames, but the model takes {f.target_length} "
                         f"frames ({predictor.input_seconds:g} s): use a window of at most {predictor.input_seconds:g} s")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    if batch_size < 1 or top_k < 1:
        raise ValueError("batch_size and top_k must be positive")
    k_top = min(top_k, len(predictor.labels))

    paths, problems = collect_inputs(inputs, recursive=recursive, list_file=list_file)
    errors = [{"path": p, "error": q} for p, q in problems]
    for e in errors:
        print(f"skipped {e['path']}: {e['error']}", file=sys.stderr)
    # Expected windows from the headers, for the progress bar only.
    expected = 0
    for p in paths:
        try:
            with Recording(p, sr) as rec:
                expected += len(window_spans(rec.num_samples, win, hp, predictor.min_samples)[0])
        except AudioError:
            pass

    def report(path: str, problem: str, what: str = "skipped") -> None:
        errors.append({"path": path, "error": problem})
        tqdm.write(f"{what} {path}: {problem}", file=sys.stderr)

    def finish(st: _FileScores, end: FileEnd) -> FileResult | None:
        if not st.starts:
            report(st.path, end.error or "no window could be read")
            return None
        starts, lengths = np.concatenate(st.starts), np.concatenate(st.lengths)
        hw, hl, hs = (torch.cat(part).numpy() for part in zip(*st.hits))
        dets = merge_detections(hw, hl, hs, starts / sr, (starts + lengths) / sr, predictor.labels, merge_gap)
        if end.error:
            report(st.path, end.error + f" (kept the {len(starts)} windows before it)", what="partly read")
        return FileResult(st.path, sr, win, predictor.labels, starts, lengths, torch.cat(st.top_i).numpy(),
                          torch.cat(st.top_s).numpy(), st.max.numpy(), dets, threshold, st.info,
                          num_samples=max(end.num_samples, int((starts + lengths).max())),
                          scores=torch.cat(st.scores).numpy() if st.scores is not None else None, error=end.error)

    def compute(waves, lengths):
        return {"scores": predictor(waves, lengths).cpu()}  # (B, L)

    files: dict[int, _FileScores] = {}
    results: dict[int, FileResult] = {}
    with tqdm(total=expected, unit="win", desc="predict", disable=not progress, file=sys.stderr) as bar:
        for ev in run_windows(paths, compute, sample_rate=sr, window=win, hop=hp, min_samples=predictor.min_samples,
                              batch_size=batch_size, block_seconds=block_seconds, read_ahead=read_ahead):
            if isinstance(ev, FileStart):
                files[ev.index] = _FileScores(ev.path, ev.info, len(predictor.labels), keep_scores)
                bar.set_postfix_str(os.path.basename(ev.path), refresh=False)
            elif isinstance(ev, Rows):
                files[ev.index].add(ev, k_top, threshold)
                bar.update(len(ev.starts))
            elif isinstance(ev, FileEnd):
                res = finish(files.pop(ev.index), ev)
                if res is not None:
                    results[ev.index] = res
                    if on_file is not None:
                        on_file(res)
            elif isinstance(ev, FileFailed):
                report(ev.path, ev.problem)

    settings = {"window": window_s, "hop": hop_s, "threshold": threshold, "top_k": k_top, "merge_gap": merge_gap,
                "activation": predictor.activation, "sample_rate": sr, "features": predictor.features.to_dict(),
                "batch_size": batch_size, "device": str(predictor.device), "bf16": predictor.bf16}
    return PredictionRun([results[i] for i in sorted(results)], errors, list(predictor.labels), settings)


# ----------------------------------------------------------------------------- writers

def infer_format(out: str | os.PathLike) -> str:
    """``json`` for ``*.json``, ``csv`` for ``*.csv``, ``raven`` for a folder (no suffix)."""
    p = Path(out)
    suffix = p.suffix.lower()
    if suffix in (".json", ".csv"):
        return suffix[1:]
    if p.is_dir() or not suffix:
        return "raven"
    raise ValueError(f"{out}: cannot tell the output format from the name; pass --format csv|json|raven")


def write_json(run: PredictionRun, path: str | os.PathLike) -> None:
    """Everything: settings, labels, per file its summary, detections and windows; errors."""
    atomic_write(path, json_text(run.to_dict()))


def _sibling(path: Path, what: str) -> Path:
    return path.with_name(f"{path.stem}.{what}.csv")


def write_csv(run: PredictionRun, path: str | os.PathLike, *, extras: bool = True) -> list[Path]:
    """Per-window rows: file, window, start, end, padded, then label_1, score_1, ... label_k, score_k.

    With ``extras``, also ``<stem>.detections.csv`` (one row per detection) and
    ``<stem>.summary.csv`` (one row per file, errors included) beside it. Returns the paths written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    k = run.settings.get("top_k") or max((r.top_index.shape[1] for r in run.files), default=1)
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "window", "start_s", "end_s", "padded"]
                   + [c for j in range(1, k + 1) for c in (f"label_{j}", f"score_{j}")])
        for r in run.files:
            st, en, pad = r.start_times, r.end_times, r.padded
            for i in range(len(st)):
                top = [c for j, s in zip(r.top_index[i], r.top_score[i]) for c in (r.labels[j], f"{s:.6f}")]
                w.writerow([r.path, i, f"{st[i]:.3f}", f"{en[i]:.3f}", int(pad[i]), *top])
    written = [p]
    if not extras:
        return written
    dpath = _sibling(p, "detections")
    with open(dpath, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "start_s", "end_s", "max_score", "mean_score", "windows", "start_time", "end_time"])
        for r in run.files:
            for d in r.detections:
                w.writerow([r.path, d.label, f"{d.start:.3f}", f"{d.end:.3f}", f"{d.max_score:.6f}",
                            f"{d.mean_score:.6f}", d.windows, r.clock(d.start) or "", r.clock(d.end) or ""])
    spath = _sibling(p, "summary")
    with open(spath, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "status", "duration_s", "windows", "detected", "recorded_at", "device_id", "gain",
                    "battery_v", "temperature_c", "comment", "error"])
        for r in run.files:
            am = r.info.get("audiomoth", {})
            w.writerow([r.path, "partial" if r.error else "ok", f"{r.duration:.3f}", len(r.starts),
                        ";".join(sorted({d.label for d in r.detections}, key=r.labels.index)),
                        am.get("recorded_at", ""), am.get("device_id", ""), am.get("gain", ""),
                        am.get("battery_v", ""), am.get("temperature_c", ""),
                        r.info.get("tags", {}).get("comment", ""), r.error or ""])
        for e in run.errors:
            w.writerow([e["path"], "error", "", "", "", "", "", "", "", "", "", e["error"]])
    return [p, dpath, spath]


def common_folder(paths: Sequence[str | os.PathLike]) -> Path | None:
    """The deepest folder holding all of ``paths``, absolute; None when there is none (no paths,
    or paths on different drives)."""
    try:
        return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    except ValueError:
        return None


def _relative_stems(paths: Sequence[str | os.PathLike], base: str | os.PathLike | None) -> list[tuple[str, int]]:
    """Per file: its path below ``base`` without the extension (``/``-separated), and its number
    among files that give the same one (1, 2, ...: same stem, another extension, or a repeated path)."""
    base = Path(os.path.abspath(base)) if base is not None else common_folder(paths)
    out, used = [], {}
    for p in paths:
        q = Path(os.path.abspath(p))
        try:
            parts = q.relative_to(base).parts
        except (TypeError, ValueError):  # no common folder: the whole path, its anchor as a folder name
            anchor = re.sub(r"[^0-9A-Za-z]+", "", q.anchor) or "root"
            parts = (anchor, *q.parts[1:])
        stem = "/".join((*parts[:-1], Path(parts[-1]).stem))
        key = stem.casefold()  # case-insensitive file systems would merge names differing in case only
        used[key] = used.get(key, 0) + 1
        out.append((stem, used[key]))
    return out


def raven_table_names(paths: Sequence[str | os.PathLike], base: str | os.PathLike | None = None) -> list[str]:
    """Per file, ``<folders>/<stem>.Table.1.selections.txt``: its path below ``base`` (default: the
    files' :func:`common_folder`), so that the tables mirror the input folders.

    ``a/rec.wav`` and ``b/rec.wav`` give ``a/rec.Table.1.selections.txt`` and
    ``b/rec.Table.1.selections.txt``. Files that would still share a name (``rec.wav`` and
    ``rec.flac`` in one folder) take Raven's next table numbers: ``rec.Table.2.selections.txt``.
    """
    return [f"{stem}.Table.{n}.selections.txt" for stem, n in _relative_stems(paths, base)]


def picture_names(paths: Sequence[str | os.PathLike], base: str | os.PathLike | None = None) -> list[str]:
    """Per file, ``<folders>/<stem>.png``, named as :func:`raven_table_names` names its table
    (a second file of the same stem in one folder: ``<stem>.2.png``)."""
    return [f"{stem}.png" if n == 1 else f"{stem}.{n}.png" for stem, n in _relative_stems(paths, base)]


def _raven_text(x: str) -> str:
    """A table cell: no tabs or line breaks (Raven splits on them), no spaces at either end."""
    return re.sub(r"[\t\r\n]+", " ", str(x)).strip()


def _raven_row(n: int, d: Detection, nyquist: float, path: str) -> list[str]:
    # Raven's own exports: times with 9 decimals, frequencies with 1 (pandas-based readers such as
    # crowsetta's require float columns, so 0 Hz is written "0.0").
    return [str(n), "Spectrogram 1", "1", f"{d.start:.9f}", f"{d.end:.9f}", "0.0", f"{nyquist:.1f}",
            _raven_text(d.label), f"{d.max_score:.6f}", f"{d.mean_score:.6f}", str(d.windows),
            _raven_text(os.path.abspath(path)), f"{d.start:.9f}", _raven_text(os.path.basename(path))]


def write_raven(run: PredictionRun, out_dir: str | os.PathLike) -> list[Path]:
    """One Raven Pro selection table per file, tab-separated, one row per detection, in ``out_dir``.

    Tables are named by :func:`raven_table_names`, relative to the folder that holds every input
    file (read or not), so ``out_dir`` mirrors the input folders. Columns: :data:`RAVEN_COLUMNS`.
    Each row spans the detection's time and the whole band (0 Hz to Nyquist of the model's rate),
    on the first spectrogram view and channel; ``Annotation`` is the label; ``Begin Path`` is the
    sound file's absolute path, ``Begin File`` its name and ``File Offset (s)`` the start within
    it (Raven opens the file with the table). Lines end in CRLF, as Raven writes them; UTF-8.
    Files without detections get a table with the header only.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    nyquist = run.settings.get("sample_rate", 16000) / 2
    # Files that failed count for the common folder too, so that names do not depend on which files could be read.
    found = [r.path for r in run.files] + [e["path"] for e in run.errors if os.path.isfile(e["path"])]
    names = raven_table_names([r.path for r in run.files], base=common_folder(found))
    written = []
    for r, name in zip(run.files, names):
        dets = sorted(r.detections, key=lambda x: (x.start, x.label_index))
        rows = [RAVEN_COLUMNS] + [_raven_row(n, x, nyquist, r.path) for n, x in enumerate(dets, 1)]
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("".join("\t".join(row) + "\r\n" for row in rows))
        written.append(path)
    return written


def write(run: PredictionRun, out: str | os.PathLike, fmt: str | None = None) -> list[Path]:
    """Write ``run`` in ``fmt`` (default: from the name, see :func:`infer_format`)."""
    fmt = fmt or infer_format(out)
    if fmt == "json":
        write_json(run, out)
        return [Path(out)]
    if fmt == "csv":
        return write_csv(run, out)
    if fmt == "raven":
        return write_raven(run, out)
    raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
