import random

import pytest
import torch

from conftest import tiny_model
from ssast.masking import cluster_mask, legacy_cluster_mask, legacy_mask, uniform_mask

GRID = (8, 64)  # the released patch models: 128 bins x 1024 frames in 16x16 patches


def _check_rows(idx, n, m):
    assert idx.dtype == torch.long and idx.shape[1] == m
    assert idx.min() >= 0 and idx.max() < n
    # distinct within each clip
    assert all(len(set(row.tolist())) == m for row in idx)


@pytest.mark.parametrize("m", [1, 9, 100, 400, 500, 512])
def test_cluster_mask_exact_count_distinct_in_range(m):
    g = torch.Generator().manual_seed(m)
    idx = cluster_mask(16, GRID, m, generator=g)
    _check_rows(idx, 512, m)


@pytest.mark.parametrize("m", [1, 100, 400, 512])
def test_uniform_mask_exact_count_distinct_in_range(m):
    g = torch.Generator().manual_seed(m)
    idx = uniform_mask(16, 512, m, generator=g)
    _check_rows(idx, 512, m)


def test_masks_follow_the_generator_and_differ_per_clip():
    a = cluster_mask(4, GRID, 400, generator=torch.Generator().manual_seed(1))
    b = cluster_mask(4, GRID, 400, generator=torch.Generator().manual_seed(1))
    c = cluster_mask(4, GRID, 400, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])
    u1 = uniform_mask(4, 512, 100, generator=torch.Generator().manual_seed(1))
    u2 = uniform_mask(4, 512, 100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(u1, u2)


def test_clusters_are_squares_of_neighbouring_patches():
    # With one 3x3 cluster's worth of masked patches on a large grid, the mask is one whole
    # 3x3 square whenever the first drawn cluster lies inside the grid (~2/3 of the draws).
    g = torch.Generator().manual_seed(0)
    idx = cluster_mask(400, (20, 20), 9, min_side=3, max_side=3, generator=g)
    f, t = idx // 20, idx % 20
    square = ((f.max(1).values - f.min(1).values) == 2) & ((t.max(1).values - t.min(1).values) == 2)
    assert square.float().mean() > 0.55
    # Cluster sides are drawn from 3 to 5: a 5x5 square appears when allowed.
    idx = cluster_mask(400, (20, 20), 25, min_side=5, max_side=5, generator=g)
    f, t = idx // 20, idx % 20
    square = ((f.max(1).values - f.min(1).values) == 4) & ((t.max(1).values - t.min(1).values) == 4)
    assert square.float().mean() > 0.4


def test_cluster_coverage_is_even_over_the_grid():
    g = torch.Generator().manual_seed(0)
    for m in (100, 400):
        idx = cluster_mask(2000, GRID, m, generator=g)
        per_cell = torch.bincount(idx.flatten(), minlength=512).float() / 2000  # masking rate per patch
        per_band = per_cell.view(GRID).mean(1)  # per frequency band
        per_step = per_cell.view(GRID).mean(0)  # per time step
        target = m / 512
        assert (per_band / target - 1).abs().max() < 0.05
        assert (per_step / target - 1).abs().max() < 0.15
        assert per_cell[0] > 0.8 * target  # patch 0 is masked like any other


def test_legacy_sampler_reproduces_the_2021_behaviour():
    # Same seed, same indices: the sampler is driven by Python's random module as in 2021.
    random.seed(123)
    a = legacy_mask(3, GRID, 400)
    random.seed(123)
    b = legacy_mask(3, GRID, 400)
    assert torch.equal(a, b)
    _check_rows(a, 512, 400)
    # Its documented flaws: patch 0 is never masked, and the lowest band is masked about
    # half as often as the middle ones.
    rng = random.Random(0)
    idx = torch.stack([legacy_cluster_mask(512, 64, 400, rng) for _ in range(300)])
    assert not (idx == 0).any()
    per_band = torch.bincount(idx.flatten() // 64, minlength=8).float()
    assert per_band[0] < 0.6 * per_band[3:6].mean()
    frames = legacy_mask(2, (1, 512), 100, cluster=False, rng=random.Random(0))
    _check_rows(frames, 512, 100)


def test_mask_errors():
    with pytest.raises(ValueError, match="mask_patch"):
        cluster_mask(2, GRID, 513)
    with pytest.raises(ValueError, match="mask_patch"):
        uniform_mask(2, 512, 0)
    with pytest.raises(ValueError, match="2021 sampler"):
        legacy_cluster_mask(512, 64, 511)


def test_model_masks_never_touch_prefix_tokens():
    """Masked positions index patches; prefix tokens are never replaced by the mask token."""
    model = tiny_model().eval()
    x = torch.randn(2, 32, 16)
    idx = model.make_mask(2, 10, generator=torch.Generator().manual_seed(0))
    seen = {}
    hook = model.v.register_forward_pre_hook(lambda mod, args: seen.setdefault("tokens", args[0].detach().clone()))
    with torch.no_grad():
        model(x, "pretrain_mpc", mask_index=idx)
    hook.remove()
    tokens = seen["tokens"]  # (B, N, D) patch tokens entering the encoder, prefix added inside
    assert tokens.shape[1] == model.config.num_patches
    is_mask = (tokens == model.mask_embed).all(-1)  # (B, N)
    expected = torch.zeros_like(is_mask).scatter_(1, idx, True)
    assert torch.equal(is_mask, expected)


def test_bad_mask_index_is_refused():
    model = tiny_model()
    x = torch.randn(2, 32, 16)
    with pytest.raises(ValueError, match="distinct"):
        model(x, "pretrain_mpc", mask_index=torch.tensor([[1, 1, 2], [0, 3, 4]]))
    with pytest.raises(ValueError, match="patch positions"):
        model(x, "pretrain_mpc", mask_index=torch.tensor([[1, 2, 32], [0, 3, 4]]))
    with pytest.raises(ValueError, match="batch=2"):
        model(x, "pretrain_mpc", mask_index=torch.tensor([[1, 2, 3]]))
