import pytest
import torch
import torch.nn.functional as F

from ssast.posembed import resample_grid, resample_pos_embed


def _grid(f, t, d=3):
    return torch.randn(1, d, f, t)


def test_identity_when_the_grid_is_unchanged():
    g = _grid(8, 64)
    assert torch.equal(resample_grid(g, (8, 64)), g)


def test_time_axis_centre_crop():
    g = _grid(8, 64)
    out = resample_grid(g, (8, 9))
    # centred: starts at 64//2 - 9//2 = 28
    assert torch.equal(out, g[..., 28:37])


def test_frequency_axis_centre_crop():
    # The 2021 code ends this crop at start + t_dim; the intent, a centred crop of f_dim rows, is done.
    g = _grid(12, 20)
    out = resample_grid(g, (5, 20))
    assert out.shape[-2:] == (5, 20)
    assert torch.equal(out, g[..., 4:9, :])  # 12//2 - 5//2 = 4


def test_time_axis_interpolation():
    g = _grid(8, 64)
    out = resample_grid(g, (8, 101))
    ref = F.interpolate(g, size=(8, 101), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    # Interpolation along time leaves each frequency row a function of that row alone.
    g2 = g.clone()
    g2[:, :, 3] += 1.0
    diff = (resample_grid(g2, (8, 101)) - out).abs().sum(dim=(0, 1, 3))
    assert diff[3] > 0 and diff[torch.arange(8) != 3].max() == 0


def test_frequency_axis_interpolation():
    g = _grid(8, 20)
    out = resample_grid(g, (12, 20))
    ref = F.interpolate(g, size=(12, 20), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    # A constant-in-frequency grid stays constant when stretched along frequency.
    flat = _grid(1, 20).expand(1, 3, 8, 20).contiguous()
    assert torch.allclose(resample_grid(flat, (12, 20)), flat[:, :, :1].expand(1, 3, 12, 20))


def test_both_axes_time_first():
    g = _grid(8, 64)
    out = resample_grid(g, (12, 9))  # crop time, then stretch frequency
    ref = F.interpolate(g[..., 28:37], size=(12, 9), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    out = resample_grid(_grid(1, 512), (1, 399))  # frame models: crop time only
    assert out.shape[-2:] == (1, 399)


def test_pos_embed_keeps_prefix_tokens_and_order():
    d, p = 4, 2
    grid = torch.arange(8 * 64, dtype=torch.float32).view(8, 64)  # value = f * 64 + t
    patches = grid.flatten()[None, :, None].expand(1, -1, d)  # frequency-major order
    prefix = torch.randn(1, p, d)
    pos = torch.cat([prefix, patches], dim=1)
    out = resample_pos_embed(pos, p, (8, 64), (8, 10))
    assert out.shape == (1, p + 80, d)
    assert torch.equal(out[:, :p], prefix)
    assert torch.equal(out[0, p:, 0].view(8, 10), grid[:, 27:37])
    with pytest.raises(ValueError, match="positions"):
        resample_pos_embed(pos, p, (8, 63), (8, 10))
