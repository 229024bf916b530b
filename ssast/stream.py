"""Long recordings as streams of windows, and the batched runner that turns them into outputs.

A recording of any length is read block by block (never whole) by :class:`Recording`, downmixed
to mono and resampled to the model's rate as it streams (:class:`StreamResampler`), and cut into
windows of ``window`` samples every ``hop`` samples (:func:`cut_windows`, :func:`window_spans`).
Windows start at 0, hop, 2 hop, ...; the last window is the first one that reaches the end of the
file; when it runs past the end it holds fewer samples (its ``length``) and is zero-padded. A
trailing window with less audio than ``min_samples`` (one analysis frame) is left out, unless it
is the only one.

:func:`run_windows` reads the files in a background thread (reading overlaps compute), batches
their windows, runs a function over each batch and hands back, per file, a :class:`FileStart`,
the :class:`Rows` of outputs of its windows in order, and a :class:`FileEnd` once every window
of the file has been computed (or :class:`FileFailed` when nothing could be read). ``ssast
predict`` and ``ssast embed`` are both consumers of it. A file that fails part-way ends with its
error and the windows read before it; the other files go on.

Recordings also give their metadata (:meth:`Recording.info`): rate, channels, length, format,
the file's tags, and AudioMoth's comment parsed into device id, time, gain, battery and
temperature (:func:`parse_audiomoth_comment`).
"""
from __future__ import annotations

import datetime as dt
import math
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .audio import AudioError, check_samples, scan_audio

# Source samples of context on each side of a resampled block; the sinc kernel of torchaudio's
# resampler (6 zero crossings, rolloff 0.99) spans at most a few dozen source samples.
RESAMPLE_CONTEXT = 512


# ----------------------------------------------------------------------------- inputs

def collect_inputs(paths: Iterable[str | os.PathLike] = (), *, recursive: bool = True,
                   list_file: str | os.PathLike | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Audio files from files, folders and a text list of paths: (files, problems).

    Folders are searched for audio files (recursively unless ``recursive=False``). The list
    file holds one path per line (a file or a folder); blank lines and lines starting with
    ``#`` are ignored; relative paths are taken from the list file's folder. Paths that do not
    exist, folders without audio, and what a folder holds that cannot be used (broken links,
    folders named like audio files, unreadable folders: :func:`ssast.audio.scan_audio`) come back
    as (path, problem) pairs. Files are returned in the order given, folders sorted, each file once.
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
            found, bad = scan_audio(p, recursive=recursive)
            problems += bad
            if not found and not bad:
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


def cut_windows(blocks: Iterable[torch.Tensor], window: int, hop: int, min_samples: int):
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

class StreamResampler:
    """Resamples a stream block by block, giving the same samples as resampling it whole.

    Each block is resampled with ``RESAMPLE_CONTEXT`` source samples of context on each side,
    and only the outputs whose kernel lies inside the block's context are kept. Block edges sit
    on multiples of ``orig / gcd`` source samples, where output samples fall on whole indices.
    """

    def __init__(self, orig: int, new: int):
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
        rs = StreamResampler(self.source_rate, self.sample_rate) if self.source_rate != self.sample_rate else None
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
            try:
                check_samples(mono, self.sample_rate)
            except AudioError as e:
                raise AudioError(self.path, f"{e.problem}, after {self.samples_read / self.source_rate:.2f} s") from None
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



# ----------------------------------------------------------------------------- the runner

class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable, depth: int) -> Iterator:
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

    t = threading.Thread(target=work, daemon=True, name="ssast-recording-reader")
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
    """("start", i, info), ("window", i, (k, start, length, samples)), ("end", i, samples read), or
    ("error", i, problem) for a file that does not open and ("failed", i, (problem, samples read)) for
    one that fails part-way."""
    for i, path in enumerate(paths):
        try:
            rec = Recording(path, sample_rate, block_seconds)
        except AudioError as e:
            yield "error", i, e.problem
            continue
        with rec:
            yield "start", i, rec.info()
            try:
                for k, start, length, wave in cut_windows(rec.blocks(), window, hop, min_samples):
                    yield "window", i, (k, start, length, wave)
            except AudioError as e:
                yield "failed", i, (e.problem, rec.samples_out)
                continue
            except Exception as e:  # a decoder failure of any kind must not stop the other files
                yield "failed", i, (f"{type(e).__name__}: {e}", rec.samples_out)
                continue
            yield "end", i, rec.samples_out


@dataclass
class FileStart:
    """A file was opened: ``info`` is its :meth:`Recording.info`."""

    index: int
    path: str
    info: dict


@dataclass
class Rows:
    """Outputs of consecutive windows of one file, in order: ``first`` is the window number of the
    first row; ``starts``/``lengths`` (n,) in samples; ``outputs``: each (n, ...) on the CPU."""

    index: int
    first: int
    starts: np.ndarray
    lengths: np.ndarray
    outputs: dict[str, torch.Tensor]


@dataclass
class FileEnd:
    """Every window of the file has been computed. ``error``: why reading stopped early (the
    windows before it were computed), or None; ``num_samples``: samples read, at the stream's rate."""

    index: int
    path: str
    windows: int
    num_samples: int
    error: str | None = None


@dataclass
class FileFailed:
    """A file that could not be opened at all."""

    index: int
    path: str
    problem: str


Event = FileStart | Rows | FileEnd | FileFailed


def run_windows(paths: Sequence[str], compute: Callable[[torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]],
                *, sample_rate: int, window: int, hop: int, min_samples: int, batch_size: int,
                block_seconds: float = 60.0, read_ahead: bool = True) -> Iterator[Event]:
    """Windows of every file, batched across files, through ``compute``; see the module docstring.

    ``compute(waves, lengths)``: ``waves`` (B, window) samples at ``sample_rate``, ``lengths``
    (B,) real samples of zero-padded windows (None when every window is full); returns a dict of
    (B, ...) tensors. ``read_ahead``: read the files in a background thread.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    events = _events(paths, sample_rate, window, hop, min_samples, block_seconds)
    if read_ahead:
        events = prefetch(events, depth=2 * batch_size + 4)
    pending: list[tuple[int, int, int, int, torch.Tensor]] = []  # (file, window number, start, length, samples)
    ended: dict[int, FileEnd] = {}  # files read to their end (or error) whose last windows are pending
    done = {}  # windows computed per file

    def run() -> Iterator[Event]:
        waves = torch.stack([p[4] for p in pending])  # (B, window)
        lens = torch.tensor([p[3] for p in pending])
        out = compute(waves, lens if int(lens.min()) < window else None)
        files = torch.tensor([p[0] for p in pending])
        for i in dict.fromkeys(files.tolist()):  # files in batch order
            rows = (files == i).nonzero().flatten()
            r = rows.tolist()
            yield Rows(i, pending[r[0]][1], np.array([pending[j][2] for j in r], dtype=np.int64),
                       np.array([pending[j][3] for j in r], dtype=np.int64), {k: v[rows] for k, v in out.items()})
            done[i] = done.get(i, 0) + len(r)
        pending.clear()
        for i in [i for i, e in ended.items() if done.get(i, 0) == e.windows]:
            yield ended.pop(i)

    for kind, i, payload in events:
        if kind == "window":
            pending.append((i, *payload))
            if len(pending) == batch_size:
                yield from run()
        elif kind == "start":
            yield FileStart(i, paths[i], payload)
        elif kind == "error":
            yield FileFailed(i, paths[i], payload)
        else:  # the end of a file, or an error part-way through it
            windows = done.get(i, 0) + sum(1 for p in pending if p[0] == i)
            samples, error = (payload, None) if kind == "end" else (payload[1], payload[0])
            end = FileEnd(i, paths[i], windows, samples, error)
            if done.get(i, 0) == windows:
                yield end
            else:
                ended[i] = end
    if pending:
        yield from run()
