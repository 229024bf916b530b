"""Reading audio: any format libsndfile reads, any sample rate, any channel count.

Everything comes out as a mono float32 tensor at the requested rate (16 kHz by default), with
integer formats scaled to [-1, 1] as libsndfile does. Problems raise :class:`AudioError`
naming the file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

DEFAULT_SAMPLE_RATE = 16000
# Extensions treated as audio when scanning folders (mp3 where the installed libsndfile reads it).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
# One 25 ms analysis window at 16 kHz: shorter clips give no fbank frame.
MIN_SECONDS = 0.025


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""

    def __init__(self, name: str | os.PathLike | None, problem: str):
        self.name = None if name is None else str(name)
        self.problem = problem
        super().__init__(problem if name is None else f"{name}: {problem}")


def is_audio_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(AUDIO_EXTENSIONS)


def _read(source, name) -> tuple[torch.Tensor, int]:
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)  # (samples, channels)
    except FileNotFoundError:
        raise AudioError(name, "no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        raise AudioError(name, f"unreadable audio ({str(e).strip() or type(e).__name__})") from None
    return torch.from_numpy(data.T.copy()), sr  # (channels, samples)


def to_mono_resampled(wave: torch.Tensor, sr: int, sample_rate: int, name=None,
                      min_seconds: float = MIN_SECONDS) -> torch.Tensor:
    """(channels, samples) at ``sr`` -> (samples,) mono at ``sample_rate``, with size checks."""
    if wave.numel() == 0 or wave.shape[-1] == 0:
        raise AudioError(name, "empty audio (0 samples)")
    if wave.shape[-1] < min_seconds * sr:
        raise AudioError(name, f"too short: {wave.shape[-1] / sr * 1000:.1f} ms, at least {min_seconds * 1000:.0f} ms needed")
    if not torch.isfinite(wave).all():
        raise AudioError(name, "audio contains NaN or infinite samples")
    mono = wave.mean(dim=0) if wave.dim() == 2 else wave  # downmix
    if sr != sample_rate:
        mono = AF.resample(mono, sr, sample_rate)
    return mono.contiguous()


def load_audio(path: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE,
               min_seconds: float = MIN_SECONDS) -> torch.Tensor:
    """Read a file as a mono float32 waveform (samples,) at ``sample_rate``."""
    p = Path(path)
    if not p.exists():
        raise AudioError(path, "no such file")
    if p.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    wave, sr = _read(str(p), path)
    return to_mono_resampled(wave, sr, sample_rate, path, min_seconds)


def decode_audio(data: bytes, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str | None = None,
                 min_seconds: float = MIN_SECONDS) -> torch.Tensor:
    """Decode encoded audio bytes (wav, flac, ogg, ...) to a mono waveform at ``sample_rate``."""
    if not data:
        raise AudioError(name, "empty audio (0 bytes)")
    wave, sr = _read(io.BytesIO(data), name)
    return to_mono_resampled(wave, sr, sample_rate, name, min_seconds)


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
    except FileNotFoundError:
        raise AudioError(path, "no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"unreadable audio ({str(e).strip() or type(e).__name__})") from None
    return info.samplerate, info.frames, info.channels
