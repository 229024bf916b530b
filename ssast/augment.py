"""Data augmentation of the official fine-tuning recipes, vectorized over the batch.

Everything is off by default (pretraining uses none of it). The recipes' order, per clip:

1. mixup of mean-removed waveforms with a Beta(10, 10) weight, labels mixed likewise (:func:`mixup`);
2. Kaldi fbank, zero-padded or cropped to the target length;
3. SpecAugment frequency and time masking of the *unnormalized* fbank, masked values set to 0
   (:func:`spec_augment`);
4. normalization ``(x - mean) / (2 * std)``;
5. uniform noise and a random roll along time (:func:`noise_and_shift`).

:func:`augment_batch` runs the five steps with an :class:`AugmentConfig`; the official recipes'
settings are in :mod:`ssast.presets`.

Each random draw is independent per clip and comes from ``generator`` when one is given (from
torch's global generator otherwise), so a seeded generator makes a batch's augmentation
reproducible. Draws are made on the generator's device and moved to the data's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .features import FeatureExtractor


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation; the defaults turn everything off.

    ``freqm``/``timem``: largest frequency/time mask widths (0: no mask); ``mixup``: probability
    that a clip is mixed with another one; ``mixup_alpha``: Beta(alpha, alpha) mixing weight;
    ``noise``: the noise-and-shift augmentation.
    """

    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    noise: bool = False

    def __post_init__(self):
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"mask widths must be >= 0, got freqm={self.freqm}, timem={self.timem}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be positive, got {self.mixup_alpha}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return bool(self.freqm or self.timem or self.mixup or self.noise)


def _rand(n: int, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """(n,) uniform [0, 1) from ``generator`` (on its own device), moved to ``device``."""
    gdev = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gdev, dtype=dtype).to(device)


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(low, high, (n,), generator=generator, device=gdev).to(device)


# ----------------------------------------------------------------------------- SpecAugment

def mask_along(feats: torch.Tensor, mask_param: int, dim: int, mask_value: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask one band along ``dim`` (-1 or -2) of each (..., time, freq) example independently.

    torchaudio's ``mask_along_axis_iid`` semantics: width ``v = U * mask_param`` and start
    ``v0 = U * (size - v)``, both truncated to integers, mask ``[int(v0), int(v0) + int(v))``;
    widths are thus uniform over 0 .. mask_param - 1. Leading dimensions are the examples.
    """
    if mask_param < 1:
        return feats
    if feats.dim() < 2 or dim not in (-1, -2, feats.dim() - 1, feats.dim() - 2):
        raise ValueError(f"expected (..., time, freq) features and dim -1 or -2, got shape {tuple(feats.shape)}, dim {dim}")
    dim = dim - feats.dim() if dim >= 0 else dim
    flat = feats.reshape(-1, *feats.shape[-2:])  # (N, T, F)
    n, size = flat.shape[0], feats.shape[dim]
    dtype = feats.dtype if feats.is_floating_point() else torch.float32
    # Draw order (width, then start) and arithmetic as torchaudio, so that with the global
    # generator the masks equal torchaudio.transforms.FrequencyMasking/TimeMasking(iid_masks=True).
    value = _rand(n, generator, feats.device, dtype) * mask_param  # (N,)
    min_value = _rand(n, generator, feats.device, dtype) * (size - value)  # (N,)
    start = min_value.long()
    end = start + value.long()
    pos = torch.arange(size, device=feats.device)
    band = (pos >= start[:, None]) & (pos < end[:, None])  # (N, size)
    band = band[:, :, None] if dim == -2 else band[:, None, :]  # (N, T, 1) or (N, 1, F)
    return flat.masked_fill(band, mask_value).reshape(feats.shape)


def spec_augment(feats: torch.Tensor, freqm: int = 0, timem: int = 0, *, mask_value: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment on (B, time, freq) features: one frequency band, then one time band, per clip.

    ``freqm``/``timem`` are the largest widths (0: off); the official fine-tuning uses 24/96
    (ESC-50), 48/48 (Speech Commands), 48/192 (AudioSet). The recipes mask the unnormalized
    fbank with 0 (``mask_value``). Returns a new tensor.
    """
    feats = mask_along(feats, freqm, -1, mask_value, generator)
    return mask_along(feats, timem, -2, mask_value, generator)


# ----------------------------------------------------------------------------- mixup

def _beta(alpha: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    # torch's Beta/Gamma samplers take no generator: seed NumPy's from the torch one, so that a
    # seeded generator (or torch.manual_seed) still decides the draw.
    gdev = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=gdev).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n))


def mixup(waves: torch.Tensor, targets: torch.Tensor, alpha: float = 10.0,
          generator: torch.Generator | None = None, *, prob: float = 1.0,
          lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each clip of a batch with another clip of it, as the official recipes mix waveforms.

    ``waves`` (B, samples); ``targets`` (B, classes) one-hot or multi-hot floats. Clip ``i`` is
    mixed, with probability ``prob`` (the recipes' ``--mixup`` rate), with a partner drawn
    uniformly among the other clips, with weight ``lam ~ Beta(alpha, alpha)``:
    ``wave = lam * (w_i - mean_i) + (1 - lam) * (w_j - mean_j)``, then its mean removed, and
    ``target = lam * t_i + (1 - lam) * t_j``. Clips left unmixed get ``lam = 1`` (their waveform
    is only mean-removed, which the fbank does anyway).

    ``lengths`` (B,): true sample counts of zero-padded clips. As in the recipes, the partner is
    cropped or zero-padded (after its mean removal) to clip ``i``'s length; samples past each
    clip's end are left 0.

    Returns the mixed waves (B, samples), mixed targets (B, classes) and the weights ``lam`` (B,).
    """
    if waves.dim() != 2 or targets.dim() != 2 or waves.shape[0] != targets.shape[0]:
        raise ValueError(f"expected waves (B, samples) and targets (B, classes), got {tuple(waves.shape)} "
                         f"and {tuple(targets.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    b, n = waves.shape
    device = waves.device
    dtype = waves.dtype if waves.is_floating_point() else torch.float32
    waves = waves.to(dtype)

    if lengths is None:
        valid = None
        centered = waves - waves.mean(dim=-1, keepdim=True)
    else:
        lengths = torch.as_tensor(lengths, device=device).long()
        valid = torch.arange(n, device=device) < lengths[:, None]  # (B, S)
        mean = (waves * valid).sum(-1, keepdim=True) / lengths[:, None].to(dtype)
        centered = (waves - mean) * valid

    lam = _beta(alpha, b, generator).to(device=device, dtype=dtype)  # (B,)
    mixed_mask = _rand(b, generator, device) < prob
    lam = torch.where(mixed_mask, lam, torch.ones_like(lam))
    # Partner j != i, uniform over the others: i + U{1 .. B-1} (mod B); a lone clip mixes with itself.
    offset = _randint(1, b, b, generator, device) if b > 1 else torch.zeros(1, dtype=torch.long, device=device)
    partner = (torch.arange(b, device=device) + offset) % b  # (B,)

    mixed = lam[:, None] * centered + (1 - lam[:, None]) * centered[partner]  # (B, S)
    if valid is None:
        mixed = mixed - mixed.mean(dim=-1, keepdim=True)
    else:
        mixed = mixed * valid
        mixed = (mixed - (mixed.sum(-1, keepdim=True) / lengths[:, None].to(dtype))) * valid
    t = targets.to(dtype)
    mixed_targets = lam[:, None] * t + (1 - lam[:, None]) * t[partner]
    return mixed, mixed_targets, lam


# ----------------------------------------------------------------------------- noise and shift

def noise_and_shift(feats: torch.Tensor, generator: torch.Generator | None = None, *,
                    noise_scale: float = 0.1, max_shift: int = 10) -> torch.Tensor:
    """The recipes' ``--noise`` augmentation of normalized (B, time, freq) features, per clip.

    Adds ``U(0, 1)`` noise (one value per time-frequency cell) times a per-clip factor
    ``U(0, 1) * noise_scale`` (the recipes' ``rand() / 10``), then rolls the clip along time by a
    per-clip integer shift drawn from ``[-max_shift, max_shift)`` (frames wrap around).
    """
    if feats.dim() != 3:
        raise ValueError(f"expected features (B, time, freq), got shape {tuple(feats.shape)}")
    b, t, _ = feats.shape
    device = feats.device
    gdev = generator.device if generator is not None else device
    noise = torch.rand(feats.shape, generator=generator, device=gdev, dtype=feats.dtype).to(device)
    scale = _rand(b, generator, device, feats.dtype) * noise_scale  # (B,)
    out = feats + noise * scale[:, None, None]
    shift = _randint(-max_shift, max_shift, b, generator, device)  # (B,)
    # torch.roll semantics per clip: out[t] = x[(t - shift) mod T]
    src = (torch.arange(t, device=device)[None, :] - shift[:, None]) % t  # (B, T)
    return out.gather(1, src[:, :, None].expand_as(out))


# ----------------------------------------------------------------------------- the recipe's order

def augment_batch(waves: torch.Tensor, targets: torch.Tensor | None, extractor: FeatureExtractor,
                  config: AugmentConfig | None = None, generator: torch.Generator | None = None,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Waveforms (B, samples) -> normalized, augmented features (B, target_length, bins), and targets.

    The official order: mixup of waveforms, fbank, pad or crop, SpecAugment on the unnormalized
    fbank, normalization, noise and shift. With the default (empty) config this is ``extractor(waves)``.
    Mixup needs ``targets`` (B, classes) as floats; targets come back mixed likewise.
    """
    config = config or AugmentConfig()
    if config.mixup > 0:
        if targets is None:
            raise ValueError("mixup needs targets")
        waves, targets, _ = mixup(waves, targets, config.mixup_alpha, generator, prob=config.mixup, lengths=lengths)
    feats = extractor.fbank(waves, lengths=lengths)  # (B, T, M) unnormalized
    feats = spec_augment(feats, config.freqm, config.timem, generator=generator)
    feats = extractor.normalize(feats)
    if config.noise:
        feats = noise_and_shift(feats, generator)
    return feats, targets
