"""Kaldi-compatible log-mel filterbank features, as the SSAST/AST recipes compute them.

The recipes call torchaudio's ``compliance.kaldi.fbank`` on one clip at a time, after removing
the clip's mean, with ``htk_compat=True``, a hanning window, 25 ms frames every 10 ms, 128 mel
bins, no dither and no energy term; the result is zero-padded or cropped to a target number of
frames and normalized as ``(x - mean) / (2 * std)``.

- :func:`fbank_reference`: that torchaudio call, one clip at a time (the golden path).
- :func:`fbank`: the same numbers for a whole batch at once, vectorized, on the waveform's device.
- :class:`FeatureConfig` / :class:`FeatureExtractor`: the settings saved in checkpoints, and the
  object that turns waveforms into model input with them.
- :func:`compute_stats`: a dataset's mean and std of the unnormalized features.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

WINDOWS = ("hanning", "hamming", "povey", "rectangular", "blackman")
PREEMPHASIS = 0.97  # Kaldi's default, which torchaudio applies and the recipes never change
LOW_FREQ = 20.0  # Kaldi's default lowest mel edge (Hz); highest is Nyquist
BLACKMAN_COEFF = 0.42

# AudioSet's statistics, used by the released checkpoints and the AudioSet recipe.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974



def fbank_reference(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128) -> torch.Tensor:
    """torchaudio's Kaldi fbank of one clip (samples,) -> (frames, num_mel_bins), unnormalized.

    The recipe's settings: mean removed, HTK-compatible mel bins, hanning window, 25 ms frames
    every 10 ms, no dither, no energy.
    """
    wave = waveform.reshape(1, -1)
    wave = wave - wave.mean()
    return kaldi.fbank(wave, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                       window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10)


# ----------------------------------------------------------------------------- batched fbank

def frame_geometry(sample_rate: float, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> tuple[int, int, int]:
    """(window size, window shift, FFT size) in samples, rounded exactly as torchaudio's Kaldi code."""
    # Same expression and evaluation order as torchaudio, so 44.1 kHz rounds the same way (1102, 441).
    shift = int(sample_rate * frame_shift_ms * 0.001)
    size = int(sample_rate * frame_length_ms * 0.001)
    if size < 2 or shift < 1:
        raise ValueError(f"frames of {frame_length_ms} ms every {frame_shift_ms} ms at {sample_rate} Hz are "
                         f"{size} samples every {shift}: too small")
    return size, shift, 2 ** (size - 1).bit_length()  # FFT size: the next power of two


def num_frames(num_samples: int | torch.Tensor, sample_rate: float, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0):
    """Frames Kaldi gives a clip of ``num_samples`` (only whole windows; 0 when shorter than one)."""
    size, shift, _ = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples >= size, 1 + (num_samples - size).div(shift, rounding_mode="floor"), 0)
    return 0 if num_samples < size else 1 + (num_samples - size) // shift


def _window(name: str, size: int, device, dtype) -> torch.Tensor:
    # Kaldi's window definitions (symmetric, not periodic), as torchaudio implements them.
    if name == "hanning":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype)
    if name == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, device=device, dtype=dtype)
    if name == "povey":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype).pow(0.85)
    if name == "rectangular":
        return torch.ones(size, device=device, dtype=dtype)
    if name == "blackman":
        n = torch.arange(size, device=device, dtype=dtype) * (2 * math.pi / (size - 1))
        return BLACKMAN_COEFF - 0.5 * torch.cos(n) + (0.5 - BLACKMAN_COEFF) * torch.cos(2 * n)
    raise ValueError(f"unknown window {name!r}: expected one of {', '.join(WINDOWS)}")


@functools.lru_cache(maxsize=32)
def _mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """(fft_size // 2 + 1, num_mel_bins) triangular HTK-mel filters, torchaudio's own, transposed."""
    banks, _ = kaldi.get_mel_banks(num_mel_bins, fft_size, float(sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
    banks = F.pad(banks, (0, 1))  # Kaldi's filters leave out the Nyquist bin: (num_mel_bins, fft_size // 2 + 1)
    return banks.to(device=device, dtype=dtype).T.contiguous()


_CPU_CHUNK_FRAMES = 1024


def _log_mel(frames: torch.Tensor, fft_size: int, window: torch.Tensor, banks: torch.Tensor) -> torch.Tensor:
    """(..., W) frames of the mean-removed clip -> (..., M) log-mel, with Kaldi's per-frame steps.

    The elementwise steps are torchaudio's, in its order, so that they round alike.
    """
    size = frames.shape[-1]
    frames = frames - frames.mean(dim=-1, keepdim=True)  # Kaldi's remove_dc_offset
    buf = frames.new_empty(*frames.shape[:-1], fft_size)  # the frame zero-padded to the FFT size
    buf[..., size:] = 0
    pre = buf[..., :size]
    # Preemphasis x[j] - 0.97 x[j-1]; the first sample is its own predecessor, as in Kaldi.
    torch.mul(frames[..., :-1], PREEMPHASIS, out=pre[..., 1:])
    torch.mul(frames[..., :1], PREEMPHASIS, out=pre[..., :1])
    torch.sub(frames, pre, out=pre)
    pre.mul_(window)
    spec = torch.fft.rfft(buf)  # (..., fft_size // 2 + 1)
    # |X|^2 as re^2 + im^2 (torchaudio squares |X|): equal to about 1e-7 relative, and much faster.
    power = spec.real.square() + spec.imag.square()
    mel = power @ banks  # (..., M)
    # torchaudio's floor is float32 epsilon whatever the dtype
    return mel.clamp_min_(torch.finfo(torch.float32).eps).log_()


def fbank(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128, *,
          lengths: torch.Tensor | Sequence[int] | None = None, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, window: str = "hanning", chunk_frames: int | None = None) -> torch.Tensor:
    """(..., samples) -> (..., frames, num_mel_bins) unnormalized log-mel, batched over leading dims.

    Each row along the last dimension is one clip; the result for each is torchaudio's
    ``compliance.kaldi.fbank`` with the recipe settings (see :func:`fbank_reference`): clip mean
    removed, per-frame DC removal, preemphasis 0.97, window, power spectrum of the frame
    zero-padded to a power of two, torchaudio's HTK mel banks, log floored at float32 epsilon.
    It runs on the waveform's device, in its floating dtype (integers become float32).

    All clips of one tensor share one length, so they all get the same number of frames. Zero
    samples padded onto a shorter clip would be treated as audio (they shift its mean and add
    frames of ``log(eps)``). For clips of unequal length padded into one tensor, pass their true
    sample counts as ``lengths`` (B,) over a (B, samples) tensor: each clip's mean is then taken
    over its own samples, and its frames past its own end are set to 0, which is exactly the
    recipes' zero padding of a shorter clip's fbank. Frames never straddle two clips, so the valid
    frames equal the per-clip result.

    ``chunk_frames``: frames processed per step (default: about a thousand on CPU, all on GPU);
    it changes speed and memory only. Features are input preprocessing: no gradient flows back.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}: expected one of {', '.join(WINDOWS)}")
    if not waveform.is_floating_point():
        waveform = waveform.float()
    size, shift, fft_size = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    lead, n = waveform.shape[:-1], waveform.shape[-1]
    if n < size:
        raise ValueError(f"clips of {n} samples are shorter than one {frame_length_ms} ms frame "
                         f"({size} samples at {sample_rate} Hz)")
    x = waveform.detach().reshape(-1, n)  # (B, S)
    device, dtype = x.device, x.dtype

    if lengths is None:
        x = x - x.mean(dim=-1, keepdim=True)
    else:
        if len(lead) != 1:
            raise ValueError(f"lengths needs a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
        lengths = torch.as_tensor(lengths).long().reshape(-1)  # (B,)
        # Checked where the counts are: lengths on the host (a training batch's) cost the device
        # no synchronisation; they are copied to it afterwards.
        if lengths.numel() != x.shape[0] or (lengths > n).any():
            raise ValueError(f"lengths must hold one count <= {n} per clip, got {lengths.tolist()}")
        if (lengths < size).any():
            short = (lengths < size).nonzero().flatten().tolist()
            raise ValueError(f"clip(s) {short} are shorter than one {frame_length_ms} ms frame ({size} samples)")
        lengths = lengths.to(device, non_blocking=True)
        valid = torch.arange(n, device=device) < lengths[:, None]  # (B, S)
        mean = (x * valid).sum(dim=-1, keepdim=True) / lengths[:, None].to(dtype)
        x = x - mean

    frames = x.unfold(-1, size, shift)  # (B, T, W), a strided view; T = 1 + (S - W) // shift
    b, t = frames.shape[:2]
    win = _window(window, size, device, dtype)  # (W,)
    banks = _mel_banks(num_mel_bins, fft_size, float(sample_rate), device, dtype)  # (K, M)
    out = x.new_empty(b, t, num_mel_bins)
    # On CPU, blocks of about a thousand frames keep the intermediates in cache (2-3x faster than
    # one pass over a large batch); a GPU takes the whole batch at once.
    rows = chunk_frames or (b * t if device.type != "cpu" else _CPU_CHUNK_FRAMES)
    per_clip = max(1, rows // t)
    per_time = min(t, rows)
    for i in range(0, b, per_clip):
        for j in range(0, t, per_time):
            out[i:i + per_clip, j:j + per_time] = _log_mel(frames[i:i + per_clip, j:j + per_time], fft_size, win, banks)
    if lengths is not None:
        counts = num_frames(lengths, sample_rate, frame_length_ms, frame_shift_ms)  # (B,)
        keep = torch.arange(out.shape[1], device=device) < counts[:, None]  # (B, T)
        out = out * keep[..., None]
    return out.reshape(*lead, *out.shape[-2:])


def pad_or_crop(feats: torch.Tensor, target_length: int, value: float = 0.0) -> torch.Tensor:
    """(..., frames, bins) -> (..., target_length, bins): pad at the end with ``value`` or keep the start.

    The recipes pad the unnormalized fbank with zeros and crop longer clips to their first frames.
    """
    n = feats.shape[-2]
    if n > target_length:
        return feats[..., :target_length, :]
    if n < target_length:
        return F.pad(feats, (0, 0, 0, target_length - n), value=value)
    return feats


# ----------------------------------------------------------------------------- extractor

@dataclass
class FeatureConfig:
    """Every setting that turns a waveform into model input; saved in checkpoints."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    target_length: int = 1024

    def __post_init__(self):
        if self.window not in WINDOWS:
            raise ValueError(f"unknown window {self.window!r}: expected one of {', '.join(WINDOWS)}")
        for name in ("sample_rate", "num_mel_bins", "target_length"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.num_mel_bins <= 3:
            raise ValueError(f"num_mel_bins must be at least 4 (Kaldi), got {self.num_mel_bins}")
        frame_geometry(self.sample_rate, self.frame_length_ms, self.frame_shift_ms)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        """Settings from :meth:`to_dict` (e.g. a checkpoint's ``features``); missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown feature setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def for_model(cls, model_config, features: "FeatureConfig | dict | None" = None) -> "FeatureConfig":
        """The settings a model's input needs: ``features`` (a checkpoint's, default AudioSet's)
        with the model's input length; ValueError if their mel bins differ from the model's."""
        if features is None:
            features = cls(num_mel_bins=model_config.input_fdim, target_length=model_config.input_tdim)
        elif isinstance(features, dict):
            features = cls.from_dict(features)
        if features.num_mel_bins != model_config.input_fdim:
            raise ValueError(f"the feature settings give {features.num_mel_bins} mel bins, the model takes "
                             f"input_fdim={model_config.input_fdim}")
        if features.target_length != model_config.input_tdim:
            # the model's input length decides: e.g. a released model loaded with another input_tdim
            features = cls.from_dict({**features.to_dict(), "target_length": model_config.input_tdim})
        return features


class FeatureExtractor:
    """Waveforms at ``config.sample_rate`` -> normalized model input (B, target_length, num_mel_bins).

    Runs on the device of the waveforms it is given. The steps, as in the recipes: Kaldi fbank,
    zero padding (of the unnormalized fbank) or cropping to ``target_length``, then
    ``(x - mean) / (2 * std)``; padded frames therefore hold ``-mean / (2 * std)`` after
    normalization, as in the recipes. :meth:`fbank` and :meth:`normalize` are the two halves, for
    SpecAugment in between (the recipes mask the unnormalized fbank).

    A waveform passed with ``sample_rate=`` other than the configured one is resampled when the
    extractor was made with ``resample=True`` and refused with a ValueError otherwise.
    """

    def __init__(self, config: FeatureConfig | None = None, resample: bool = False):
        self.config = config or FeatureConfig()
        self.resample = resample

    def to_dict(self) -> dict:
        return self.config.to_dict()

    @classmethod
    def from_dict(cls, d: dict, resample: bool = False) -> "FeatureExtractor":
        return cls(FeatureConfig.from_dict(d), resample=resample)

    def _batch(self, waves, sample_rate, lengths):
        """(B, S) waveform at the configured rate, and per-clip lengths (or None)."""
        c = self.config
        if isinstance(waves, (list, tuple)):
            if not waves:
                raise ValueError("no waveforms given")
            if any(w.dim() != 1 for w in waves):
                raise ValueError("a list of waveforms must hold 1-D (samples,) tensors")
            if lengths is not None:
                raise ValueError("lengths is only for a padded (B, samples) tensor; a list carries its own")
            lens = [w.shape[-1] for w in waves]
            if sample_rate is not None and sample_rate != c.sample_rate:
                waves = [self._check_rate(w, sample_rate) for w in waves]
                lens = [w.shape[-1] for w in waves]
            batch = torch.nn.utils.rnn.pad_sequence(list(waves), batch_first=True)
            return batch, None if len(set(lens)) == 1 else lens
        if waves.dim() == 1:
            waves = waves[None]
        if waves.dim() != 2:
            raise ValueError(f"expected waveforms (samples,) or (batch, samples), got shape {tuple(waves.shape)}")
        if sample_rate is not None and sample_rate != c.sample_rate:
            if lengths is not None:
                raise ValueError("resampling a padded batch with lengths is not supported; pass a list of clips")
            waves = self._check_rate(waves, sample_rate)
        return waves, lengths

    def _check_rate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if not self.resample:
            raise ValueError(f"waveform at {sample_rate} Hz, but the features are defined at "
                             f"{self.config.sample_rate} Hz: resample it first, or use FeatureExtractor(..., resample=True)")
        return AF.resample(wave if wave.is_floating_point() else wave.float(), sample_rate, self.config.sample_rate)

    def fbank(self, waves, sample_rate: int | None = None, lengths=None) -> torch.Tensor:
        """Unnormalized log-mel, zero-padded or cropped to target_length: (B, target_length, num_mel_bins).

        ``waves``: (samples,), (B, samples), or a list of 1-D clips of any lengths. ``lengths``:
        true sample counts of the clips of a zero-padded (B, samples) tensor.
        """
        c = self.config
        batch, lens = self._batch(waves, sample_rate, lengths)
        feats = fbank(batch, c.sample_rate, c.num_mel_bins, lengths=lens, frame_length_ms=c.frame_length_ms,
                      frame_shift_ms=c.frame_shift_ms, window=c.window)
        return pad_or_crop(feats, c.target_length)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.config.mean) / (2 * self.config.std)

    def __call__(self, waves, sample_rate: int | None = None, lengths=None) -> torch.Tensor:
        """Normalized model input (B, target_length, num_mel_bins); see :meth:`fbank` for the inputs."""
        return self.normalize(self.fbank(waves, sample_rate, lengths))

    def __repr__(self) -> str:
        return f"FeatureExtractor({self.config}, resample={self.resample})"


# ----------------------------------------------------------------------------- dataset statistics

@dataclass
class FeatureStats:
    """Mean and std of log-mel values, and how many clips, frames and values they come from."""

    mean: float
    std: float
    clips: int
    frames: int
    values: int

    def to_dict(self) -> dict:
        return asdict(self)


class StatsAccumulator:
    """Running mean and variance of all values seen, in float64, merged batch by batch.

    Batches are merged with the pairwise update of Chan, Golub and LeVeque, so the result equals
    the mean and (unbiased, like ``torch.std``) standard deviation of all values pooled together,
    whatever the batching.
    """

    def __init__(self):
        self.n, self.mean, self.m2, self.clips, self.frames = 0, 0.0, 0.0, 0, 0

    def update(self, values: torch.Tensor, clips: int = 0, frames: int = 0) -> None:
        v = values.detach().reshape(-1).double()
        nb = v.numel()
        if nb == 0:
            return
        mb = v.mean()
        m2b = ((v - mb) ** 2).sum().item()
        mb = mb.item()
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.clips += clips
        self.frames += frames

    def result(self) -> FeatureStats:
        if self.n == 0:
            raise ValueError("no feature values seen: no clip could be used")
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return FeatureStats(self.mean, std, self.clips, self.frames, self.n)


def stats_batches(waves: Iterable[torch.Tensor], batch_size: int = 32) -> Iterable[list[torch.Tensor]]:
    batch = []
    for w in waves:
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def update_stats(acc: StatsAccumulator, clips: Sequence[torch.Tensor], config: FeatureConfig,
                 include_padding: bool = False, device=None) -> None:
    """Add the fbank values of some 1-D clips (at ``config.sample_rate``) to ``acc``."""
    c = config
    lens = torch.tensor([w.shape[-1] for w in clips])
    batch = torch.nn.utils.rnn.pad_sequence([w.reshape(-1) for w in clips], batch_first=True)
    if device is not None:
        batch = batch.to(device)
    feats = fbank(batch, c.sample_rate, c.num_mel_bins, lengths=lens, frame_length_ms=c.frame_length_ms,
                  frame_shift_ms=c.frame_shift_ms, window=c.window)  # (B, T, M), zeros past each clip's end
    counts = num_frames(lens, c.sample_rate, c.frame_length_ms, c.frame_shift_ms).clamp_max(c.target_length)
    feats = pad_or_crop(feats, c.target_length)
    if include_padding:
        values, frames = feats, feats.shape[0] * feats.shape[1]
    else:
        keep = torch.arange(feats.shape[1]) < counts[:, None]  # (B, T) real frames only
        values, frames = feats[keep.to(feats.device)], int(counts.sum())
    acc.update(values, clips=len(clips), frames=frames)


def compute_stats(waves: Iterable[torch.Tensor], config: FeatureConfig | None = None, *,
                  include_padding: bool = False, batch_size: int = 32, device=None) -> FeatureStats:
    """Mean and std of the unnormalized fbank over a dataset: all frames, all mel bins.

    ``waves``: 1-D clips at ``config.sample_rate`` (any lengths). Each clip's fbank is cropped to
    ``config.target_length`` frames, as the model sees it. By default only real frames count: the
    result is the pooled mean and standard deviation of every log-mel value the clips produce.
    With ``include_padding=True``, clips shorter than the target length also contribute the zero
    frames they are padded with, as the recipes' normalization statistics do.

    The official script (``get_norm_stats.py``) runs the training loader with normalization,
    SpecAugment and mixup off, takes ``mean`` and ``std`` of each batch of padded fbanks, and
    reports the average of the batch means and the average of the batch stds. Its mean equals the
    pooled mean of the padded values; its std is somewhat smaller than the pooled std, by the spread
    of the batch means. Here the std is the pooled one, independent of batch size and order.
    """
    config = config or FeatureConfig()
    acc = StatsAccumulator()
    for batch in stats_batches(waves, batch_size):
        update_stats(acc, batch, config, include_padding=include_padding, device=device)
    return acc.result()
