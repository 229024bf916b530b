"""Running a fine-tuned model over recordings: sliding windows, scores, detections, summaries.

A recording of any length is read block by block (never whole), downmixed to mono and
resampled to the model's rate as it streams, and cut into windows of ``window`` seconds every
``hop`` seconds. Windows start at 0, hop, 2 hop, ...; the last window is the first one that
reaches the end of the file. When it runs past the end it holds fewer samples and is marked
``padded``: its fbank is zero-padded to the model's input length, as the recipes pad clips
shorter than the input. A trailing window with less audio than one 25 ms analysis frame is
left out (unless it is the only one).

Windows from one or more files are batched and scored on the device under
``torch.inference_mode``. Scores are probabilities: sigmoid for multi-label models, softmax for
single-label ones (see :func:`resolve_activation`). Per label, windows scoring at least the
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
import json
import math
import os
import queue
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from .audio import AudioError, is_audio_file
from .features import FeatureConfig, FeatureExtractor, frame_geometry, num_frames

ACTIVATIONS = ("auto", "sigmoid", "softmax")
FORMATS = ("csv", "json", "raven")
AUDIOSET_LABELS = 527
# Source samples of context on each side of a resampled block; the sinc kernel of torchaudio's
# resampler (6 zero crossings, rolloff 0.99) spans at most a few dozen source samples.
RESAMPLE_CONTEXT = 512
# Raven Pro's selection-table columns: its own seven, the annotation, the detection's scores, then
# the file measurements (Begin Path and File Offset make it a "sound selection table" that opens
# its sound file).
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Annotation", "Max Score", "Mean Score", "Windows", "Begin Path",
                 "File Offset (s)", "Begin File")


# ----------------------------------------------------------------------------- inputs

def collect_inputs(paths: Iterable[str | os.PathLike] = (), *, recursive: bool = True,
                   list_file: str | os.PathLike | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Audio files from files, folders and a text list of paths: (files, problems).

    Folders are searched for audio files (recursively unless ``recursive=False``). The list
    file holds one path per line (a file or a folder); blank lines and lines starting with
    ``#`` are ignored; relative paths are taken from the list file's folder. Paths that do not
    exist, and folders without audio, come back as (path, problem) pairs. Files are returned in
    the order given, folders sorted, each file once.
    """
    entries = [str(p) for p in paths]
    problems: list[tuple[str, str]] = []
    if list_file is not None:
        lp = Path(list_file)
        try:
            lines = lp.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{list_file}: cannot read the list of paths ({e})") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(os.path.expanduser(line))
                entries.append(str(q if q.is_absolute() else lp.parent / q))
    files: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(str(p))

    for e in entries:
        p = Path(e)
        if p.is_dir():
            found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir()) if q.is_file() and is_audio_file(q))
            if not found:
                problems.append((e, "folder holds no audio files" + ("" if recursive else " (not searched recursively)")))
            for q in found:
                add(q)
        elif p.is_file():
            add(p)  # any file named explicitly is tried, whatever its extension
        else:
            problems.append((e, "no such file or folder"))
    return files, problems


# ----------------------------------------------------------------------------- windows

def window_spans(num_samples: int, window: int, hop: int, min_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) in samples of the windows over a recording of ``num_samples``.

    Windows start every ``hop`` samples; the last is the first that reaches the end (it holds
    ``length < window`` samples when it runs past the end). A trailing window shorter than
    ``min_samples`` is dropped unless it is the only one; a recording shorter than
    ``min_samples`` has no window.
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be at least one sample, got {window} and {hop}")
    n = 0 if num_samples < window else (num_samples - window) // hop + 1  # full windows
    start = n * hop
    if start < num_samples and (n == 0 or (n - 1) * hop + window < num_samples):
        if num_samples - start >= min_samples:
            n += 1
    starts = np.arange(n, dtype=np.int64) * hop
    return starts, np.minimum(window, num_samples - starts)


def _windows(blocks: Iterable[torch.Tensor], window: int, hop: int, min_samples: int):
    """Cut a stream of mono blocks into windows: yields (index, start, length, samples (window,)).

    Equal to :func:`window_spans` on the concatenated stream, holding at most about one window
    plus one block in memory. A partial last window is zero-padded to ``window`` samples.
    """
    buf = torch.zeros(0)
    buf_start = total = k = 0
    for block in blocks:
        buf = torch.cat([buf, block]) if buf.numel() else block
        total += block.numel()
        while k * hop + window <= total:
            s = k * hop - buf_start
            yield k, k * hop, window, buf[s:s + window].clone()
            k += 1
        drop = min(k * hop - buf_start, buf.numel())  # samples no later window needs
        if drop > 0:
            buf, buf_start = buf[drop:], buf_start + drop
    starts, lengths = window_spans(total, window, hop, min_samples)
    if len(starts) > k:  # the padded last window
        s0, n = int(starts[k]), int(lengths[k])
        out = torch.zeros(window)
        out[:n] = buf[s0 - buf_start:s0 - buf_start + n]
        yield k, s0, n, out
    elif not len(starts):
        raise AudioError(None, f"too short: {total} samples, at least {min_samples} needed for one frame")


# ----------------------------------------------------------------------------- streaming audio

class _StreamResampler:
    """Resamples a stream block by block, giving the same samples as resampling it whole.

    Each block is resampled with ``RESAMPLE_CONTEXT`` source samples of context on each side,
    and only the outputs whose kernel lies inside the block's context are kept. Block edges sit
    on multiples of ``orig / gcd`` source samples, where output samples fall on whole indices.
    """

    def __init__(self, orig: int, new: int):
        import torchaudio

        g = math.gcd(orig, new)
        self.o, self.n = orig // g, new // g
        self.ctx = -(-RESAMPLE_CONTEXT // self.o) * self.o
        self.resample = torchaudio.transforms.Resample(orig, new)  # keeps its kernel between calls
        self.buf = torch.zeros(0)
        self.buf_start = 0  # source index of buf[0]
        self.next = 0  # first source index whose output is still owed; a multiple of o

    def _emit(self, a: int, b: int | None, stop: int) -> torch.Tensor:
        s0 = max(a - self.ctx, 0)
        y = self.resample(self.buf[s0 - self.buf_start:stop - self.buf_start])
        off = (a - s0) * self.n // self.o
        return y[off:] if b is None else y[off:off + (b - a) * self.n // self.o]

    def push(self, x: torch.Tensor) -> torch.Tensor:
        self.buf = torch.cat([self.buf, x])
        end = self.buf_start + self.buf.numel()
        b = (end - self.ctx) // self.o * self.o
        if b <= self.next:
            return torch.zeros(0)
        out = self._emit(self.next, b, end)
        self.next = b
        keep = max(b - self.ctx, 0)
        self.buf, self.buf_start = self.buf[keep - self.buf_start:], keep
        return out

    def flush(self) -> torch.Tensor:
        end = self.buf_start + self.buf.numel()
        if end <= self.next:
            return torch.zeros(0)
        return self._emit(self.next, None, end)


class Recording:
    """An audio file read block by block as a mono float32 stream at ``sample_rate``.

    The header (rate, channels, length, format, tags) is read on opening; :meth:`blocks`
    streams the samples. Problems raise :class:`~ssast.audio.AudioError` naming the file.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, block_seconds: float = 60.0):
        self.path = str(path)
        self.sample_rate = sample_rate
        self.block_seconds = block_seconds
        if os.path.isdir(self.path):
            raise AudioError(self.path, "is a directory, not an audio file")
        try:
            self._file = sf.SoundFile(self.path)
        except FileNotFoundError:
            raise AudioError(self.path, "no such file") from None
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
            raise AudioError(self.path, f"unreadable audio ({str(e).strip() or type(e).__name__})") from None
        f = self._file
        self.source_rate, self.channels, self.frames = f.samplerate, f.channels, f.frames
        self.format, self.subtype = f.format, f.subtype
        try:
            self.tags = {k: v for k, v in f.copy_metadata().items() if v}
        except (sf.LibsndfileError, RuntimeError, UnicodeDecodeError):
            self.tags = {}
        if self.frames <= 0:
            self.close()
            raise AudioError(self.path, "empty audio (0 samples)")
        self.samples_read = 0  # source frames read so far

    @property
    def num_samples(self) -> int:
        """Samples at ``sample_rate`` the file gives (torchaudio's resampled length), from the header."""
        g = math.gcd(self.source_rate, self.sample_rate)
        return -(-self.frames * (self.sample_rate // g) // (self.source_rate // g))

    @property
    def duration(self) -> float:
        return self.frames / self.source_rate

    @property
    def samples_out(self) -> int:
        """Samples at ``sample_rate`` streamed so far (all of them once :meth:`blocks` is exhausted)."""
        g = math.gcd(self.source_rate, self.sample_rate)
        return -(-self.samples_read * (self.sample_rate // g) // (self.source_rate // g))

    def blocks(self) -> Iterator[torch.Tensor]:
        f = self._file
        rs = _StreamResampler(self.source_rate, self.sample_rate) if self.source_rate != self.sample_rate else None
        step = rs.o if rs else 1
        size = max(1, round(self.block_seconds * self.source_rate / step)) * step
        while True:
            try:
                data = f.read(size, dtype="float32", always_2d=True)  # (frames, channels)
            except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as e:
                raise AudioError(self.path, f"read error after {self.samples_read / self.source_rate:.2f} s "
                                            f"({str(e).strip() or type(e).__name__})") from None
            if not len(data):
                break
            mono = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy())  # downmix
            if not torch.isfinite(mono).all():
                raise AudioError(self.path, "audio contains NaN or infinite samples "
                                            f"after {self.samples_read / self.source_rate:.2f} s")
            self.samples_read += len(mono)
            out = rs.push(mono) if rs else mono
            if out.numel():
                yield out
        if self.samples_read == 0:
            raise AudioError(self.path, "empty audio (0 samples)")
        if rs:
            tail = rs.flush()
            if tail.numel():
                yield tail

    def info(self) -> dict:
        """File facts and metadata for the summary."""
        meta = {"sample_rate": self.source_rate, "channels": self.channels, "frames": self.frames,
                "format": self.format, "subtype": self.subtype}
        meta.update(describe_tags(self.tags))
        return meta

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- metadata

_AM_TIME = re.compile(r"Recorded at (\d{1,2}):(\d{2}):(\d{2}) (\d{1,2})/(\d{1,2})/(\d{4})"
                      r"(?: \(UTC(?:([+-])(\d{1,2})(?::?(\d{2}))?)?\))?")
_AM_DEVICE = re.compile(r"by AudioMoth ([0-9A-Fa-f]{16})")
_AM_GAIN = re.compile(r"at ([A-Za-z-]+) gain|gain setting (\d+)")
_AM_BATTERY = re.compile(r"battery (?:state )?was (?:(less|greater) than )?(\d+(?:\.\d+)?) ?V")
_AM_TEMPERATURE = re.compile(r"temperature was (-?\d+(?:\.\d+)?) ?C")


def parse_audiomoth_comment(text: str) -> dict:
    """The fields of an AudioMoth comment, those present only.

    AudioMoth firmware writes e.g. ``Recorded at 14:23:05 12/05/2023 (UTC+1) by AudioMoth
    24E144085F256A23 at medium gain while battery was 4.2V and temperature was 21.3C.`` (date
    day/month/year; older firmware: ``at gain setting 2 while battery state was 4.3V``; the
    battery may read ``less than 3.6V`` or ``greater than 4.9V``). Returns ``recorded_at`` (ISO
    8601 with the UTC offset when given), ``device_id``, ``gain``, ``battery_v`` (with
    ``battery_bound`` "less"/"greater" when the firmware gave one) and ``temperature_c``.
    """
    out: dict = {}
    if m := _AM_TIME.search(text):
        hh, mm, ss, day, month, year, sign, oh, om = m.groups()
        tz = None
        if m.group(0).endswith(")"):  # "(UTC)" or "(UTC+h[:mm])"
            offset = dt.timedelta(hours=int(oh or 0), minutes=int(om or 0))
            tz = dt.timezone(-offset if sign == "-" else offset)
        try:
            out["recorded_at"] = dt.datetime(int(year), int(month), int(day), int(hh), int(mm), int(ss),
                                             tzinfo=tz).isoformat()
        except ValueError:
            pass  # an impossible date: keep the other fields and the raw comment
    if m := _AM_DEVICE.search(text):
        out["device_id"] = m.group(1).upper()
    if m := _AM_GAIN.search(text):
        out["gain"] = m.group(1) or m.group(2)
    if m := _AM_BATTERY.search(text):
        out["battery_v"] = float(m.group(2))
        if m.group(1):
            out["battery_bound"] = m.group(1)
    if m := _AM_TEMPERATURE.search(text):
        out["temperature_c"] = float(m.group(1))
    return out


def describe_tags(tags: dict[str, str]) -> dict:
    """Summary metadata from a file's tags (libsndfile's: RIFF INFO chunk, Vorbis comments).

    Keeps every tag under ``tags`` (the raw ``comment`` included) and adds the fields parsed
    from an AudioMoth comment under ``audiomoth``.
    """
    out: dict = {}
    if tags:
        out["tags"] = dict(tags)
    comment = tags.get("comment", "")
    if "AudioMoth" in comment or "AudioMoth" in tags.get("artist", ""):
        parsed = parse_audiomoth_comment(comment)
        if "device_id" not in parsed and (m := re.search(r"AudioMoth ([0-9A-Fa-f]{16})", tags.get("artist", ""))):
            parsed["device_id"] = m.group(1).upper()
        out["audiomoth"] = parsed
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """File facts and parsed tags of one audio file (see :meth:`Recording.info`)."""
    with Recording(path) as rec:
        return rec.info()


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

def resolve_activation(activation: str, label_dim: int, meta: dict | None = None) -> str:
    """``sigmoid`` or ``softmax`` for ``activation='auto'`` (or the one asked for).

    ``auto``: the checkpoint's meta decides when it records ``activation`` or ``multilabel``;
    otherwise sigmoid for a 527-label (AudioSet, multi-label) model and softmax for any other
    label count (single-label tasks such as ESC-50 and Speech Commands).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    if activation != "auto":
        return activation
    meta = meta or {}
    if meta.get("activation") in ("sigmoid", "softmax"):
        return meta["activation"]
    if isinstance(meta.get("multilabel"), bool):
        return "sigmoid" if meta["multilabel"] else "softmax"
    return "sigmoid" if label_dim == AUDIOSET_LABELS else "softmax"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """A fine-tuned model with its feature settings, label names and score activation.

    ``features``: a :class:`~ssast.features.FeatureConfig` or its dict (a checkpoint's
    ``features``); default AudioSet settings. Its ``target_length`` is set to the model's
    ``input_tdim`` and its ``num_mel_bins`` must equal ``input_fdim``.
    """

    def __init__(self, model: torch.nn.Module, *, features: FeatureConfig | dict | None = None,
                 labels: Sequence[str] | None = None, activation: str = "auto", meta: dict | None = None,
                 device: str | torch.device | None = None, bf16: bool = False):
        cfg = model.config
        if cfg.stage != "finetune":
            raise ValueError("prediction needs a fine-tuned model with a classification head")
        features = FeatureConfig.for_model(cfg, features)
        self.features = features
        self.extractor = FeatureExtractor(features)
        if labels is None:
            labels = [f"LABEL_{i}" for i in range(cfg.label_dim)]
        labels = [str(x) for x in labels]
        if len(labels) != cfg.label_dim:
            raise ValueError(f"{len(labels)} label names for a model with {cfg.label_dim} outputs")
        self.labels = labels
        self.activation = resolve_activation(activation, cfg.label_dim, meta)
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.eval().to(self.device)
        self.bf16 = bf16

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, labels_csv: str | os.PathLike | None = None,
                        activation: str = "auto", device=None, bf16: bool = False, **geometry) -> "Predictor":
        """A predictor from a fine-tuned checkpoint (see :func:`ssast.load_finetuned`).

        Label names: ``labels_csv`` (the official ``class_labels_indices.csv``: display names in
        index order), else the checkpoint's, else ``LABEL_i``. ``geometry``: fshape, tshape,
        fstride, tstride, input_fdim, input_tdim of released files, which do not store them.
        """
        from .model import load_finetuned

        model = load_finetuned(path, **geometry)
        labels = getattr(model, "labels", None)
        if labels_csv is not None:
            from .sources import read_label_csv

            _, labels = read_label_csv(labels_csv)
        meta = getattr(model, "meta", None)
        if meta is None and activation == "auto":
            from .checkpoint import read_checkpoint

            meta = read_checkpoint(path).meta
        return cls(model, features=getattr(model, "features", None), labels=labels, activation=activation,
                   meta=meta, device=device, bf16=bf16)

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
        logits = logits.float()
        return logits.sigmoid() if self.activation == "sigmoid" else logits.softmax(dim=-1)


# ----------------------------------------------------------------------------- the run

class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _prefetch(items: Iterable, depth: int) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` ahead, so reading overlaps compute."""
    q: queue.Queue = queue.Queue(depth)
    done, stop = object(), threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for x in items:
                if not put(x):
                    break
            else:
                put(done)
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Raised(e))
        finally:
            if hasattr(items, "close"):
                items.close()  # closes the file being read when the consumer stopped early

    t = threading.Thread(target=work, daemon=True, name="ssast-predict-reader")
    t.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x
    finally:
        stop.set()


def _events(paths: Sequence[str], sample_rate: int, window: int, hop: int, min_samples: int, block_seconds: float):
    """("start", i, info), ("window", i, (k, start, length, samples)), ("end", i, samples) or ("error", i, problem)."""
    for i, path in enumerate(paths):
        try:
            rec = Recording(path, sample_rate, block_seconds)
        except AudioError as e:
            yield "error", i, e.problem
            continue
        with rec:
            yield "start", i, rec.info()
            try:
                for k, start, length, wave in _windows(rec.blocks(), window, hop, min_samples):
                    yield "window", i, (k, start, length, wave)
            except AudioError as e:
                yield "error", i, e.problem
                continue
            except Exception as e:  # a decoder failure of any kind must not stop the other files
                yield "error", i, f"{type(e).__name__}: {e}"
                continue
            yield "end", i, rec.samples_out


class _FileState:
    def __init__(self, path: str, info: dict, num_labels: int, keep_scores: bool):
        self.path, self.info = path, info
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.top_i: list[torch.Tensor] = []
        self.top_s: list[torch.Tensor] = []
        self.hits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.scores: list[torch.Tensor] | None = [] if keep_scores else None
        self.max = torch.zeros(num_labels)
        self.expected: int | None = None  # windows, once the file has been read to its end
        self.num_samples = 0
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.expected is not None and len(self.starts) == self.expected


def predict(predictor: Predictor, inputs: Iterable[str | os.PathLike] = (), *, window: float | None = None,
            hop: float | None = None, threshold: float = 0.5, top_k: int = 5, batch_size: int = 16,
            recursive: bool = True, list_file: str | os.PathLike | None = None, merge_gap: float = 0.0,
            keep_scores: bool = False, progress: bool = True, prefetch: bool = True,
            block_seconds: float = 60.0, on_file: Callable[[FileResult], None] | None = None) -> PredictionRun:
    """Score every window of every file; see the module docstring.

    ``inputs``: audio files and folders; ``list_file``: a text file of more paths (see
    :func:`collect_inputs`). ``window``/``hop`` in seconds (default: the model's input length,
    and half of it). ``keep_scores``: also keep each window's full score vector (float16) in
    :attr:`FileResult.scores`, as the timeline plot uses. ``on_file`` is called with each
    file's result as soon as the file is done. Files that cannot be read are listed in
    ``errors`` (and on stderr) and skipped; a file that fails part-way keeps the windows read
    before the failure and carries the error.
    """
    from tqdm import tqdm

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

    states: dict[int, _FileState] = {}
    results: dict[int, FileResult] = {}
    bar = tqdm(total=expected, unit="win", desc="predict", disable=not progress, file=sys.stderr)

    def report(path: str, problem: str, what: str = "skipped") -> None:
        errors.append({"path": path, "error": problem})
        tqdm.write(f"{what} {path}: {problem}", file=sys.stderr)

    def run_batch(batch: list) -> None:
        waves = torch.stack([b[4] for b in batch])  # (B, window)
        lens = [b[3] for b in batch]
        scores = predictor(waves, torch.tensor(lens) if min(lens) < win else None)  # (B, L)
        ts, ti = scores.topk(k_top, dim=-1)  # (B, k)
        hit_b, hit_l = (scores >= threshold).nonzero(as_tuple=True)
        hit_s = scores[hit_b, hit_l]
        scores, ts, ti = scores.cpu(), ts.cpu(), ti.cpu()
        hit_b, hit_l, hit_s = hit_b.cpu(), hit_l.cpu(), hit_s.cpu()
        file_ids = torch.tensor([b[0] for b in batch])
        for i in file_ids.unique().tolist():
            st = states[i]
            rows = (file_ids == i).nonzero().flatten()
            base = len(st.starts)
            st.starts += [batch[r][2] for r in rows.tolist()]
            st.lengths += [batch[r][3] for r in rows.tolist()]
            st.top_i.append(ti[rows])
            st.top_s.append(ts[rows])
            st.max = torch.maximum(st.max, scores[rows].max(dim=0).values)
            if st.scores is not None:
                st.scores.append(scores[rows].half())
            sel = file_ids[hit_b] == i
            # window number within the file: rows of one file are consecutive windows in the batch
            st.hits.append((hit_b[sel] - rows[0] + base, hit_l[sel], hit_s[sel]))
        bar.update(len(batch))

    def finish(i: int) -> None:
        st = states.pop(i)
        if not st.starts:
            report(st.path, st.error or "no window could be read")
            return
        starts, lengths = np.array(st.starts, dtype=np.int64), np.array(st.lengths, dtype=np.int64)
        hw = torch.cat([h[0] for h in st.hits]).numpy()
        hl = torch.cat([h[1] for h in st.hits]).numpy()
        hs = torch.cat([h[2] for h in st.hits]).numpy()
        dets = merge_detections(hw, hl, hs, starts / sr, (starts + lengths) / sr, predictor.labels, merge_gap)
        res = FileResult(st.path, sr, win, predictor.labels, starts, lengths, torch.cat(st.top_i).numpy(),
                         torch.cat(st.top_s).numpy(), st.max.numpy(), dets, threshold, st.info,
                         num_samples=max(st.num_samples, int((starts + lengths).max())),
                         scores=torch.cat(st.scores).numpy() if st.scores is not None else None, error=st.error)
        if st.error:
            report(st.path, st.error + f" (kept the {len(starts)} windows before it)", what="partly read")
        results[i] = res
        if on_file is not None:
            on_file(res)

    def flush_ready() -> None:
        for i in [i for i, st in states.items() if st.ready]:
            finish(i)

    events = _events(paths, sr, win, hp, predictor.min_samples, block_seconds)
    if prefetch:
        events = _prefetch(events, depth=2 * batch_size + 4)
    pending: list = []
    try:
        for kind, i, payload in events:
            if kind == "start":
                states[i] = _FileState(paths[i], payload, len(predictor.labels), keep_scores)
                bar.set_postfix_str(os.path.basename(paths[i]), refresh=False)
            elif kind == "window":
                pending.append((i, *payload))
                if len(pending) == batch_size:
                    run_batch(pending)
                    pending = []
                    flush_ready()
            elif kind == "end":
                states[i].expected = len(states[i].starts) + sum(1 for b in pending if b[0] == i)
                states[i].num_samples = payload
                flush_ready()
            else:  # error
                if i in states:
                    states[i].error = payload
                    states[i].expected = len(states[i].starts) + sum(1 for b in pending if b[0] == i)
                    flush_ready()
                else:
                    report(paths[i], payload)
        if pending:
            run_batch(pending)
        flush_ready()
    finally:
        bar.close()

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
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(run.to_dict(), f, indent=1, ensure_ascii=False)
        f.write("\n")


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
