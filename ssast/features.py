"""Kaldi-compatible log-mel filterbank features, as the SSAST/AST recipes compute them."""
from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi


def fbank_reference(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128) -> torch.Tensor:
    """torchaudio's Kaldi fbank of one clip (samples,) -> (frames, num_mel_bins), unnormalized.

    The recipe's settings: mean removed, HTK-compatible mel bins, hanning window, 25 ms frames
    every 10 ms, no dither, no energy.
    """
    wave = waveform.reshape(1, -1)
    wave = wave - wave.mean()
    return kaldi.fbank(wave, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                       window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10)


def fbank(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128) -> torch.Tensor:
    """(..., samples) -> (..., frames, num_mel_bins) unnormalized log-mel, clip by clip."""
    lead = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1])
    out = torch.stack([fbank_reference(w, sample_rate, num_mel_bins) for w in flat])
    return out.reshape(*lead, *out.shape[-2:])
