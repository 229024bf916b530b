"""Reading audio: any format libsndfile reads, any sample rate, any channel count.

Everything comes out as a mono float32 tensor at the requested rate (16 kHz by default), with
integer formats scaled to [-1, 1] as libsndfile does. Problems raise :class:`AudioError`
naming the file: unreadable (including "permission denied"), empty, too short, non-finite
samples, or samples so large that the fbank features could not be finite. :func:`scan_audio`
lists the audio files of a folder and what it could not use.
"""
from __future__ import annotations

import errno
import io
import math
import os
import stat
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

from .features import PREEMPHASIS, frame_geometry

DEFAULT_SAMPLE_RATE = 16000
# Extensions treated as audio when scanning folders (mp3 where the installed libsndfile reads it).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
# One 25 ms analysis window at 16 kHz: shorter clips give no fbank frame.
MIN_SECONDS = 0.025
# torchaudio's default sinc resampler (AF.resample): kernel half-width in zero crossings, roll-off.
_RESAMPLE_ZEROS, _RESAMPLE_ROLLOFF = 6, 0.99


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""

    def __init__(self, name: str | os.PathLike | None, problem: str):
        self.name = None if name is None else str(name)
        self.problem = problem
        super().__init__(problem if name is None else f"{name}: {problem}")


def is_audio_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(AUDIO_EXTENSIONS)


def _os_problem(e: OSError) -> str:
    """What an OS error on opening a file means, in the words the reports use."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not an audio file"
    return (e.strerror or str(e)).lower()


def _unreadable(source, e: Exception) -> str:
    """The problem behind a libsndfile failure. libsndfile says only "System error" when the
    file cannot be opened at all; opening it here gives the operating system's reason."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb"):
                pass
        except OSError as oe:
            return _os_problem(oe)
    return f"unreadable audio ({str(e).strip() or type(e).__name__})"


def _frames_needed(max_samples: int, sr: int, sample_rate: int) -> int:
    """Input frames at ``sr`` that give the first ``max_samples`` samples at ``sample_rate``
    exactly as resampling the whole file would (up to float rounding).

    torchaudio's resampler works on the rates divided by their gcd (``orig`` in, ``new`` out):
    each group of ``new`` output samples comes from ``orig`` input samples plus ``width`` on
    either side, so the first ``ceil(max_samples / new)`` groups need that many times ``orig``
    input samples, plus ``width`` past the last one.
    """
    if sr == sample_rate:
        return max_samples
    g = math.gcd(sr, sample_rate)
    orig, new = sr // g, sample_rate // g
    width = math.ceil(_RESAMPLE_ZEROS * orig / (min(orig, new) * _RESAMPLE_ROLLOFF))
    return -(-max_samples // new) * orig + width + 1


def max_sample_magnitude(sample_rate: int = DEFAULT_SAMPLE_RATE) -> float:
    """The largest sample magnitude whose float32 Kaldi fbank at ``sample_rate`` is surely finite.

    Follow a sample bound A through the fbank (:func:`ssast.features.fbank`, 25 ms frames: at
    16 kHz, W = 400 samples zero-padded to an FFT of N = 512): removing the clip's mean and then
    each frame's mean at most doubles it twice (4A); preemphasis x[j] - 0.97 x[j-1] gives at most
    1.97 * 4A; the window is at most 1. By Parseval, the power spectrum of a frame sums to N times
    its energy, at most N * W * (7.88 A)^2, and each mel value is a sum of power bins with weights
    at most 1, so no larger. Every intermediate (FFT sums, squares, the mel product) is bounded by
    that too. It stays below float32's largest value (3.4e38) for A up to
    sqrt(3.4e38 / (N * W)) / 7.88, 5.2e15 at 16 kHz. Real audio is within [-1, 1]: a file beyond
    this bound is broken, and its features would be inf or NaN.
    """
    size, _, fft_size = frame_geometry(sample_rate)
    gain = 2 * 2 * (1 + PREEMPHASIS)
    return math.sqrt(torch.finfo(torch.float32).max / (fft_size * size)) / gain


def _peak(wave: torch.Tensor) -> float:
    """The largest sample magnitude; NaN if there is a NaN (without the copy abs() would make)."""
    lo, hi = torch.aminmax(wave)
    return torch.maximum(-lo, hi).item()


def check_samples(wave: torch.Tensor, sample_rate: int, name=None) -> None:
    """AudioError naming ``name`` when ``wave`` holds NaN, infinite or (for the fbank) too large samples."""
    _check_peak(_peak(wave), sample_rate, name)


def _check_peak(peak: float, sample_rate: int, name) -> None:
    if not math.isfinite(peak):
        raise AudioError(name, "audio contains NaN or infinite samples")
    limit = max_sample_magnitude(sample_rate)
    if peak > limit:
        raise AudioError(name, f"samples up to {peak:.0e}: beyond ±{limit:.1e}, where the float32 fbank "
                               f"overflows; features would not be finite")


def _read(source, name, sample_rate: int, max_samples: int | None = None) -> tuple[torch.Tensor, int]:
    """(channels, samples) float32 and the file's rate; only the frames ``max_samples`` needs."""
    try:
        with sf.SoundFile(source) as f:
            frames = -1 if max_samples is None else _frames_needed(max_samples, f.samplerate, sample_rate)
            data = f.read(frames, dtype="float32", always_2d=True)  # (samples, channels)
            sr = f.samplerate
    except OSError as e:
        raise AudioError(name, _os_problem(e)) from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        raise AudioError(name, _unreadable(source, e)) from None
    return torch.from_numpy(data.T.copy()), sr  # (channels, samples)


def to_mono_resampled(wave: torch.Tensor, sr: int, sample_rate: int, name=None,
                      min_seconds: float = MIN_SECONDS, max_samples: int | None = None) -> torch.Tensor:
    """(channels, samples) at ``sr`` -> (samples,) mono at ``sample_rate``, with size and value
    checks; at most ``max_samples`` samples when given."""
    if wave.numel() == 0 or wave.shape[-1] == 0:
        raise AudioError(name, "empty audio (0 samples)")
    if wave.shape[-1] < min_seconds * sr:
        raise AudioError(name, f"too short: {wave.shape[-1] / sr * 1000:.1f} ms, at least {min_seconds * 1000:.0f} ms needed")
    _check_peak(_peak(wave), sample_rate, name)
    mono = wave.mean(dim=0) if wave.dim() == 2 else wave  # downmix
    if sr != sample_rate:
        mono = AF.resample(mono, sr, sample_rate)
        _check_peak(_peak(mono), sample_rate, name)  # the resampler's overshoot
    if max_samples is not None:
        mono = mono[:max_samples]
    return mono.contiguous()


def _check_path(path) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise AudioError(path, _os_problem(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a directory, not an audio file")


def load_audio(path: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE,
               min_seconds: float = MIN_SECONDS, max_samples: int | None = None) -> torch.Tensor:
    """Read a file as a mono float32 waveform (samples,) at ``sample_rate``.

    ``max_samples``: keep only the first ``max_samples`` samples (at ``sample_rate``), reading
    from the file only the frames they need, so memory does not grow with the file's length.
    """
    _check_path(path)
    wave, sr = _read(str(path), path, sample_rate, max_samples)
    return to_mono_resampled(wave, sr, sample_rate, path, min_seconds, max_samples)


def decode_audio(data: bytes, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str | None = None,
                 min_seconds: float = MIN_SECONDS, max_samples: int | None = None) -> torch.Tensor:
    """Decode encoded audio bytes (wav, flac, ogg, ...) to a mono waveform at ``sample_rate``."""
    if not data:
        raise AudioError(name, "empty audio (0 bytes)")
    wave, sr = _read(io.BytesIO(data), name, sample_rate, max_samples)
    return to_mono_resampled(wave, sr, sample_rate, name, min_seconds, max_samples)


def encode_flac(wave: torch.Tensor, sample_rate: int) -> bytes:
    """Lossless 16-bit FLAC bytes of a mono (samples,) or (channels, samples) waveform."""
    arr = wave.detach().cpu().float().clamp(-1, 1)
    arr = arr.T.numpy() if arr.dim() == 2 else arr.numpy()
    buf = io.BytesIO()
    sf.write(buf, arr, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample rate, frames, channels) from the header, without decoding; AudioError if unreadable."""
    try:
        info = sf.info(str(path))
    except OSError as e:
        raise AudioError(path, _os_problem(e)) from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, _unreadable(str(path), e)) from None
    return info.samplerate, info.frames, info.channels


# ----------------------------------------------------------------------------- folder scans

def _entry_problem(entry: os.DirEntry) -> str | None:
    """Why an entry named like an audio file is not one, or None for a usable file."""
    try:
        st = os.stat(entry.path)  # follows a symlink to what it points at
    except FileNotFoundError:
        return "broken symbolic link" if entry.is_symlink() else "no such file"
    except OSError as e:
        if entry.is_symlink() and e.errno == errno.ELOOP:
            return "symbolic link loop"
        return _os_problem(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def scan_audio(folder: str | os.PathLike, recursive: bool = True) -> tuple[list[Path], list[tuple[str, str]]]:
    """Audio files in ``folder`` (searched recursively unless ``recursive=False``), sorted, and
    (path, problem) pairs for what was found but cannot be used: symlinks named like audio files
    that point nowhere ("broken symbolic link"), folders named like audio files ("is a
    directory"), folders that cannot be listed ("permission denied").

    Symlinks to files are listed as files; symlinked folders below ``folder`` are not entered
    (as :meth:`pathlib.Path.rglob` does, so that a link loop cannot recurse forever).
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    pending = [Path(folder)]
    while pending:
        d = pending.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            problems.append((str(d), _os_problem(e) if not isinstance(e, NotADirectoryError) else "not a folder"))
            continue
        for entry in entries:
            p = d / entry.name
            try:
                real_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                real_dir = False
            if real_dir and recursive:
                pending.append(p)
            if not is_audio_file(entry.name):
                continue
            problem = _entry_problem(entry)
            if problem is None:
                files.append(p)
            else:
                problems.append((str(p), problem))
    files.sort()
    problems.sort()
    return files, problems
