"""SpecAugment, mixup and noise-and-shift: golden values from torchaudio, properties of the draws."""
import pytest
import torch
import torchaudio

from ssast import presets
from ssast.augment import AugmentConfig, augment_batch, mask_along, mixup, noise_and_shift, spec_augment
from ssast.features import FeatureConfig, FeatureExtractor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- SpecAugment

def test_spec_augment_equals_torchaudio_iid_masks():
    x = torch.randn(32, 100, 40) + 5  # (B, time, freq)
    torch.manual_seed(3)
    ours = spec_augment(x, freqm=24, timem=30)
    torch.manual_seed(3)
    ta = x.transpose(1, 2).unsqueeze(1)  # torchaudio's (B, 1, freq, time)
    ta = torchaudio.transforms.FrequencyMasking(24, iid_masks=True)(ta)
    ta = torchaudio.transforms.TimeMasking(30, iid_masks=True)(ta)
    assert torch.equal(ours, ta.squeeze(1).transpose(1, 2))
    assert (ours == 0).any()


def _bands(masked: torch.Tensor, dim: int):
    """Per clip (start, width) of the zeroed band along dim of a mask over ones."""
    zero = (masked == 0).all(dim=-2 if dim == -1 else -1)  # (B, size): fully masked lines
    width = zero.sum(-1)
    start = torch.where(width > 0, zero.float().argmax(-1), -1)
    return start, width


@pytest.mark.parametrize("dim,param,size", [(-1, 24, 64), (-2, 96, 300)])
def test_mask_widths_uniform_and_within_bounds(dim, param, size):
    b = 3000
    shape = (b, size, 8) if dim == -2 else (b, 8, size)
    ones = torch.ones(shape)
    out = mask_along(ones, param, dim, generator=gen(1))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    start, width = _bands(out, dim)
    assert ((out == 0).sum(dim=(1, 2)) == width * 8).all()  # one contiguous full band per clip
    assert width.min() >= 0 and width.max() == param - 1  # torchaudio: widths 0 .. param - 1
    counts = torch.bincount(width, minlength=param).float()
    assert counts.min() > 0.5 * b / param and counts.max() < 1.5 * b / param
    assert abs(width.float().mean().item() - (param - 1) / 2) < 0.05 * param
    has = width > 0
    assert (start[has] + width[has] <= size).all() and start[has].min() == 0


def test_masks_independent_per_clip_and_deterministic():
    x = torch.ones(500, 128, 64)
    a = spec_augment(x, 24, 48, generator=gen(7))
    b = spec_augment(x, 24, 48, generator=gen(7))
    c = spec_augment(x, 24, 48, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fs, fw = _bands(mask_along(x, 24, -1, generator=gen(9)), -1)
    pairs = set(zip(fs.tolist(), fw.tolist()))
    assert len(pairs) > 300  # not one mask for the whole batch
    r = torch.corrcoef(torch.stack([fw[:-1].float(), fw[1:].float()]))[0, 1]
    assert abs(r.item()) < 0.15


def test_spec_augment_off_and_mask_value():
    x = torch.randn(4, 50, 20)
    assert torch.equal(spec_augment(x), x)
    y = spec_augment(x, freqm=20, mask_value=-7.0, generator=gen(2))
    changed = y != x
    assert (y[changed] == -7.0).all()
    assert changed.any(dim=-1).all(dim=-1).logical_or(~changed.any(dim=(1, 2))).all()  # whole freq columns


# ----------------------------------------------------------------------------- mixup

def test_mixup_labels_consistent_with_waves():
    b = 12
    # clip i is the unit pulse at sample i and target i is class i: a mixed clip shows its
    # weights on the clips it came from, which must be its target's weights.
    waves, targets = torch.eye(b), torch.eye(b)
    mw, mt, lam = mixup(waves, targets, generator=gen(0))
    assert torch.allclose(mw, mt - mt.mean(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(mt.sum(-1), torch.ones(b))
    assert torch.allclose(mt.diagonal(), lam)
    assert ((mt > 0).sum(-1) == 2).all()  # always another clip, never itself
    assert ((lam > 0) & (lam < 1)).all()


def test_mixup_multi_hot_shared_label():
    waves = torch.randn(2, 400)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    _, mt, lam = mixup(waves, targets, generator=gen(1))
    assert torch.allclose(mt[:, 1], torch.ones(2))  # the recipe adds lam and 1 - lam for a shared label
    assert torch.allclose(mt[0], torch.stack([lam[0], torch.tensor(1.0), 1 - lam[0]]))


def test_mixup_beta_weights_and_rate():
    b = 4000
    waves, targets = torch.randn(b, 8), torch.eye(b)[:, :10].contiguous()
    _, _, lam = mixup(waves, targets, alpha=10.0, generator=gen(2))
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 100 / (400 * 21)) < 0.0015  # Beta(10, 10) variance
    mw, mt, lam = mixup(waves, targets, generator=gen(3), prob=0.6)
    unmixed = lam == 1
    assert 0.35 < unmixed.float().mean().item() < 0.45
    assert torch.allclose(mw[unmixed], (waves - waves.mean(-1, keepdim=True))[unmixed], atol=1e-6)
    assert torch.equal(mt[unmixed], targets[unmixed])


def test_mixup_deterministic_with_generator():
    waves, targets = torch.randn(8, 100), torch.eye(8)
    a = mixup(waves, targets, generator=gen(5))
    b = mixup(waves, targets, generator=gen(5))
    c = mixup(waves, targets, generator=gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])


def test_mixup_with_lengths_follows_the_recipe():
    w1, w2 = torch.randn(100) + 1.0, torch.randn(60) - 2.0
    waves = torch.nn.utils.rnn.pad_sequence([w1, w2], batch_first=True)
    mw, _, lam = mixup(waves, torch.eye(2), generator=gen(4), lengths=torch.tensor([100, 60]))
    c1, c2 = w1 - w1.mean(), w2 - w2.mean()
    # recipe: the partner is zero-padded or cropped to the clip's length, after its mean removal
    e1 = lam[0] * c1 + (1 - lam[0]) * torch.cat([c2, torch.zeros(40)])
    e2 = lam[1] * c2 + (1 - lam[1]) * c1[:60]
    assert torch.allclose(mw[0], e1 - e1.mean(), atol=1e-6)
    assert torch.allclose(mw[1, :60], e2 - e2.mean(), atol=1e-6)
    assert (mw[1, 60:] == 0).all()


# ----------------------------------------------------------------------------- noise and shift

def test_noise_and_shift_per_clip():
    b, t = 400, 50
    x = torch.arange(t, dtype=torch.float32)[None, :, None].expand(b, t, 3) * 10  # time index, spaced
    out = noise_and_shift(x, gen(0))
    # each clip is x rolled by one integer shift in [-10, 10), plus noise in [0, scale) with scale < 0.1
    shifts = []
    for i in range(b):
        found = [s for s in range(-10, 10)
                 if ((out[i] - torch.roll(x[i], s, 0)) >= 0).all() and ((out[i] - torch.roll(x[i], s, 0)) < 0.1).all()]
        assert len(found) == 1
        shifts.append(found[0])
    assert set(shifts) == set(range(-10, 10))  # -10 included, 10 excluded
    noise = torch.stack([out[i] - torch.roll(x[i], s, 0) for i, s in enumerate(shifts)])
    peak = noise.amax(dim=(1, 2))
    assert peak.max() < 0.1 and peak.min() < 0.02  # the per-clip factor varies: U(0, 1) / 10


def test_noise_and_shift_deterministic():
    x = torch.randn(4, 30, 8)
    assert torch.equal(noise_and_shift(x, gen(1)), noise_and_shift(x, gen(1)))
    assert not torch.equal(noise_and_shift(x, gen(1)), noise_and_shift(x, gen(2)))


# ----------------------------------------------------------------------------- the recipe order

def test_augment_batch_order_and_defaults():
    sr = 16000
    fe = FeatureExtractor(FeatureConfig(target_length=120))
    waves = 0.1 * torch.randn(6, sr, generator=gen(0))
    plain, t = augment_batch(waves, None, fe)
    assert torch.equal(plain, fe(waves)) and t is None
    assert not AugmentConfig().active and not presets.get("pretrain").augment.active
    # masks go on the unnormalized fbank (value 0), so masked cells read -mean / (2 std) after normalization
    masked, _ = augment_batch(waves, None, fe, AugmentConfig(freqm=48, timem=48), generator=gen(1))
    hit = masked != plain
    assert hit.any()
    assert torch.allclose(masked[hit], torch.tensor(-fe.config.mean / (2 * fe.config.std)))


def test_augment_batch_presets():
    fe = FeatureExtractor(presets.get("speechcommands").features())
    waves = 0.1 * torch.randn(4, 16000, generator=gen(0))
    targets = torch.eye(4)
    cfg = presets.get("speechcommands").augment
    assert (cfg.freqm, cfg.timem, cfg.mixup, cfg.noise) == (48, 48, 0.6, True)
    a, ta = augment_batch(waves, targets, fe, cfg, generator=gen(3))
    b, tb = augment_batch(waves, targets, fe, cfg, generator=gen(3))
    assert a.shape == (4, 128, 128) and torch.equal(a, b) and torch.equal(ta, tb)
    assert torch.allclose(ta.sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="targets"):
        augment_batch(waves, None, fe, cfg)
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(mixup=1.5)
