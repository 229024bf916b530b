"""s3prl (SUPERB) upstream expert for SSAST models: the hidden states of every encoder block.

Each window's computation is that of s3prl's own ssast upstream (s3prl 0.4.18), so that SUPERB
numbers stay comparable with it:

- each window is ``int(window_secs * 16000)`` samples of 16 kHz audio, turned into 128-bin Kaldi
  fbank, normalized with AudioSet's statistics as ``(x + 4.2677393) / (2 * 4.5689974)`` and
  zero-padded or cropped to ``int(window_secs * 100)`` frames, the padding added after
  normalization;
- the model is the fine-tuning-stage encoder built from the pretrained checkpoint for that input
  length, with s3prl's strides: 10x10 for 16x16 patch models, and frequency stride 128 with
  time stride 1 for 128x2 frame models;
- ``hidden_states`` holds one tensor per block, that block's output before the final norm, with
  the prefix tokens dropped and the frequency patches of one time step concatenated along the
  feature axis: (batch, time steps, f_dim * D);
- the downsample rate is ``160 * tstride`` samples (one time step per 10 ms fbank frame times
  the time stride).

Where the windows sit in time is this module's own, because s3prl's placement drifts: it tiles
the clip with non-overlapping windows, but a window of ``window_secs`` yields only
``(frames - tshape) // tstride + 1`` steps, fewer than ``window_secs * 16000 / rate`` (9 of 10
for a 1 s patch window), so its k-th step is late by one step per window already passed, and a
long clip gets too few steps for s3prl's ``Featurizer``. Here, for any clip length and window:

- step k describes the audio centred on sample ``k * rate``: the centre of its patch's receptive
  field (``((tshape - 1) * 160 + 400) / 2`` samples after the start of its first fbank frame)
  lies there, which is how s3prl's downstream tasks read step k (e.g. diarization labels step k
  with the speech at ``k * rate / 16000`` s). The audio before the clip start is silence (zeros);
- a window keeps the steps whose patches lie wholly in its real fbank frames (not in the zero
  frames that pad it to ``int(window_secs * 100)``), ``steps_per_window`` of them, and the next
  window starts that many steps later: windows overlap by the remainder, and every step is
  computed once, by one window;
- every clip of a batch gets ``len(range(0, longest clip, rate))`` steps, the length that s3prl
  trims its features to and that its ``Featurizer`` checks.

Overlapping windows of s3prl's own length keep each window's numbers equal to s3prl's upstream on
the same audio; windows padded with context, or one pass over a longer input, would change the
positional grid and the padding that the model sees, and so every hidden state.

Features differ from the fine-tuning recipes in two ways, both s3prl's: the recipes remove the
clip's mean before the fbank, and pad the fbank before normalizing it (so that padded frames hold
``-mean / (2 * std)``, not 0). The first makes no difference in exact arithmetic, because Kaldi
removes each frame's own mean before its FFT; :func:`ssast.features.fbank` removes the window's
mean and agrees with torchaudio's fbank of the raw window to float32 rounding. The second is
kept: padded frames are 0 here.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssast import CheckpointError, loading
from ssast.config import grid_size
from ssast.features import AUDIOSET_MEAN, AUDIOSET_STD, fbank, frame_geometry, num_frames, pad_or_crop

SAMPLE_RATE = 16000
FBANK_HOP = 160  # samples between fbank frames: 10 ms at 16 kHz
DEFAULT_WINDOW_SECS = 1.0
# s3prl's strides for the released patch shape; frame models use (fshape, 1).
PATCH_STRIDES = {(16, 16): (10, 10)}


def s3prl_strides(config, path: str | None = None) -> tuple[int, int]:
    """(fstride, tstride) that s3prl's ssast upstream uses for a model's patch shape."""
    fshape, tshape = config.fshape, config.tshape
    if config.is_frame_model:
        return fshape, 1
    if (fshape, tshape) in PATCH_STRIDES:
        return PATCH_STRIDES[(fshape, tshape)]
    raise CheckpointError(
        path, f"s3prl defines strides for 16x16 patch and 128x2 frame models only; this model has "
        f"{fshape}x{tshape} patches: pass fstride= and tstride= explicitly"
    )


def read_model_config(model_config: str | os.PathLike | None) -> dict:
    """Settings from s3prl's ``-g/--upstream_model_config`` file: a YAML mapping, e.g. ``window_secs: 6``."""
    if model_config is None:
        return {}
    path = Path(model_config)
    if not path.is_file():
        raise FileNotFoundError(f"{model_config}: upstream model config file not found")
    import yaml

    try:
        conf = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{model_config}: not a YAML file ({e})") from None
    known = {"window_secs", "fstride", "tstride"}
    if not isinstance(conf, dict) or set(conf) - known:
        extra = sorted(set(conf) - known) if isinstance(conf, dict) else conf
        raise ValueError(f"{model_config}: expected a mapping with keys among {sorted(known)}, got {extra!r}")
    return conf


class UpstreamExpert(nn.Module):
    """An SSAST checkpoint as an s3prl upstream; see the module docstring for the conventions.

    ``ckpt``: a pretraining or fine-tuned checkpoint, released or project format; patch or frame
    model and size are read from it. ``model_config``: optional YAML file (s3prl's ``-g``) that
    may set ``window_secs``, ``fstride``, ``tstride``; arguments given here take precedence.
    ``expect``: ``"patch"`` or ``"frame"`` to refuse a checkpoint of the other kind.
    ``refresh`` is accepted, and unused, because s3prl's runner passes it to every upstream.
    """

    def __init__(
        self,
        ckpt: str | os.PathLike,
        model_config: str | os.PathLike | None = None,
        window_secs: float | None = None,
        *,
        fstride: int | None = None,
        tstride: int | None = None,
        expect: str | None = None,
        refresh: bool = False,
    ):
        super().__init__()
        conf = read_model_config(model_config)
        window_secs = float(window_secs if window_secs is not None else conf.get("window_secs", DEFAULT_WINDOW_SECS))
        fstride = fstride if fstride is not None else conf.get("fstride")
        tstride = tstride if tstride is not None else conf.get("tstride")

        if ckpt is None:
            raise ValueError("no checkpoint given: pass ckpt= (s3prl: -k /path/to/checkpoint.pth)")
        checkpoint = loading.read(ckpt)
        src = checkpoint.config
        kind = "frame" if src.is_frame_model else "patch"
        if expect is not None and kind != expect:
            raise CheckpointError(
                ckpt, f"expected an SSAST {expect} model, but the checkpoint holds a {kind} model "
                f"({src.fshape}x{src.tshape} patches)"
            )
        if fstride is None or tstride is None:
            default = s3prl_strides(src, str(ckpt))
            fstride = default[0] if fstride is None else fstride
            tstride = default[1] if tstride is None else tstride

        # The same expressions as s3prl, so that the sizes round alike for any window_secs.
        self.window_samples = int(window_secs * SAMPLE_RATE)
        target_length = int(window_secs * SAMPLE_RATE / FBANK_HOP)
        frame_size, _, _ = frame_geometry(SAMPLE_RATE)
        if num_frames(self.window_samples, SAMPLE_RATE) < src.tshape:
            shortest = (src.tshape - 1) * FBANK_HOP + frame_size
            raise ValueError(
                f"window_secs={window_secs} is too short: a window must hold at least {src.tshape} fbank "
                f"frames ({shortest / SAMPLE_RATE:g} s) for {src.fshape}x{src.tshape} patches"
            )
        # The encoder at s3prl's strides and input length: the positional grid is resampled to it.
        self.model = loading.load(checkpoint, stage="finetune", fstride=fstride, tstride=tstride,
                                  target_length=target_length).model
        cfg = self.model.config

        self.window_secs = window_secs
        self.model_type = kind
        self.target_length = target_length
        self.num_mel_bins = cfg.input_fdim
        self.tstride = tstride
        # Steps whose patches lie wholly in a window's real fbank frames; the next window starts
        # that many steps later.
        self.steps_per_window = grid_size(num_frames(self.window_samples, SAMPLE_RATE), cfg.tshape, tstride)
        self.hop_samples = self.steps_per_window * self.get_downsample_rates()
        # Samples from the start of a patch's first fbank frame to the centre of its receptive
        # field: the audio is shifted by this much so that step k is centred on k * rate.
        self.offset_samples = ((cfg.tshape - 1) * FBANK_HOP + frame_size) // 2

    def get_downsample_rates(self, key: str | None = None) -> int:
        """Samples of 16 kHz audio per time step of every hidden state."""
        return FBANK_HOP * self.tstride

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, window samples) -> (N, target_length, mel bins) model input, s3prl's normalization."""
        x = fbank(windows, SAMPLE_RATE, self.num_mel_bins)  # (N, frames, M)
        x = (x - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
        return pad_or_crop(x, self.target_length, value=0.0)  # (N, target_length, M)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Model input (N, T, F) -> every block's output (N, P + f*t, D), before the final norm."""
        outs: list[torch.Tensor] = []
        hooks = [blk.register_forward_hook(lambda _m, _i, out: outs.append(out)) for blk in self.model.v.blocks]
        try:
            self.model.encode(x)
        finally:
            for h in hooks:
                h.remove()
        return outs

    def num_steps(self, num_samples: int) -> int:
        """Time steps for a clip of ``num_samples``: one per ``rate`` samples, as s3prl counts them."""
        return len(range(0, num_samples, self.get_downsample_rates()))

    def windows(self, wavs: list[torch.Tensor]) -> torch.Tensor:
        """1-D waveforms -> (B, windows, window samples): the audio each window sees.

        Window w starts ``w * hop_samples - offset_samples`` samples into the clip; samples
        before the clip's start and past its end are 0. There are just enough windows for
        ``num_steps`` of the longest clip.
        """
        if not len(wavs):
            raise ValueError("no waveforms given")
        if any(w.dim() != 1 for w in wavs):
            raise ValueError("expected a list of 1-D waveforms (samples,)")
        max_len = max(len(w) for w in wavs)
        if max_len == 0:
            raise ValueError("all waveforms are empty")
        win, hop, left = self.window_samples, self.hop_samples, self.offset_samples
        n_win = -(-self.num_steps(max_len) // self.steps_per_window)
        total = (n_win - 1) * hop + win  # samples spanned by the windows, from -left
        batch = torch.nn.utils.rnn.pad_sequence([w.float() for w in wavs], batch_first=True)  # (B, S)
        # The last window may end before the clip does, by less than one step: those samples
        # belong to no kept patch, and are cut.
        batch = F.pad(batch, (left, max(0, total - left - max_len)))[:, :total]  # (B, total)
        return batch.unfold(1, win, hop)  # (B, n_win, win), overlapping views

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """A list of 1-D 16 kHz waveforms -> ``{"hidden_states": [(B, steps, f_dim * D)] * depth}``."""
        windows = self.windows(wavs)  # (B, n_win, win)
        b, n_win, win = windows.shape
        x = self.features(windows.reshape(b * n_win, win))  # (B * n_win, T, M): all windows at once

        cfg = self.model.config
        p, f_dim, t_dim, keep = cfg.num_prefix_tokens, cfg.f_dim, cfg.t_dim, self.steps_per_window
        steps = self.num_steps(max(len(w) for w in wavs))
        hidden = []
        for h in self.block_outputs(x):
            h = h[:, p:].reshape(b * n_win, f_dim, t_dim, -1)  # (B * n_win, f, t, D): frequency-major tokens
            h = h.transpose(1, 2)[:, :keep].flatten(2)  # (B * n_win, keep, f * D)
            h = h.reshape(b, n_win * keep, -1)  # (B, n_win * keep, f * D): windows in time order
            hidden.append(h[:, :steps].float())
        return {"hidden_states": hidden}

    def extra_repr(self) -> str:
        return (f"model_type={self.model_type!r}, window_secs={self.window_secs}, "
                f"downsample_rate={self.get_downsample_rates()}, steps_per_window={self.steps_per_window}, "
                f"offset_samples={self.offset_samples}")
