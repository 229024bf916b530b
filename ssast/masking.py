"""Which patches to mask in masked-patch pretraining.

All samplers return a (B, M) long tensor of patch positions (frequency-major, index
``f * t_dim + t``, prefix tokens not counted), M distinct positions per clip, sorted, on the
requested device. Randomness comes only from the ``torch.Generator`` passed in (or torch's
default generator), never from Python's ``random`` module, so a run is reproducible from a seed.

How :func:`cluster_mask` differs from the 2021 sampler (:func:`legacy_cluster_mask`):

* The 2021 sampler draws cluster corners over the flattened patch index and keeps a cell only
  if its index is in ``(0, N)``. A cluster therefore wraps from the last time step of one
  frequency row into the first time steps of the next, patch 0 is never masked, and cells near
  the grid's start are under-covered. It then truncates a Python ``set`` of indices to M
  entries; a set of small integers iterates in increasing order, so surplus indices are dropped
  from the top and low positions are favoured (the lowest mel band is masked about half as often
  as the middle ones).
* Here clusters are squares on the 2-D (frequency, time) grid and never wrap. Corners are drawn
  so that every cell, edge cells and patch 0 included, is covered by the same number of possible
  clusters, which keeps coverage even across the grid. Clusters are taken in the order drawn
  until M cells are covered; the last cluster is cut at random cells, not at low indices. If the
  drawn clusters cover fewer than M cells (rare, only when M is close to N), the rest is filled
  with uniformly drawn cells.

The legacy samplers are kept, as Python loops driven by a ``random.Random``-like object, to
reproduce the old behaviour exactly: seeded the same way as the 2021 code seeded Python's
``random`` module, they return the same indices.
"""
from __future__ import annotations

import math
import random as _random

import torch


def _check_counts(num_patches: int, mask_size: int) -> None:
    if not 0 < mask_size <= num_patches:
        raise ValueError(f"mask_patch must be in [1, {num_patches}] (the number of patches), got {mask_size}")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"the generator lives on {generator.device} but the masks are drawn on {device}")


def uniform_mask(
    batch: int,
    num_patches: int,
    mask_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """M positions drawn uniformly without replacement, per clip (frame-based models)."""
    _check_counts(num_patches, mask_size)
    _check_generator(generator, device)
    scores = torch.rand(batch, num_patches, generator=generator, device=device)  # (B, N)
    idx = scores.topk(mask_size, dim=1, largest=False).indices  # (B, M)
    return idx.sort(dim=1).values


def cluster_mask(
    batch: int,
    grid: tuple[int, int],
    mask_size: int,
    *,
    min_side: int = 3,
    max_side: int = 5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """M positions made of square clusters of neighbouring patches (patch-based models).

    Each clip draws one cluster side in ``[min_side, max_side]`` and a sequence of cluster
    corners; cells are taken cluster by cluster until exactly M distinct cells are masked.
    """
    f_dim, t_dim = grid
    n = f_dim * t_dim
    _check_counts(n, mask_size)
    _check_generator(generator, device)
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")

    # Enough clusters to cover the grid about three times over at the smallest side, so that M
    # cells are covered in all but extreme cases (the fallback below handles those).
    k = math.ceil(3 * n / min_side**2) + 1
    side = torch.randint(min_side, max_side + 1, (batch, 1), generator=generator, device=device)  # (B, 1)
    # A corner may lie up to side-1 cells before the grid, so that every cell, edge cells
    # included, is covered by side*side possible corners.
    u = torch.rand(batch, k, 2, generator=generator, device=device)  # (B, K, 2)
    f0 = (u[..., 0] * (f_dim + side - 1)).long() - (side - 1)  # (B, K)
    t0 = (u[..., 1] * (t_dim + side - 1)).long() - (side - 1)  # (B, K)

    off = torch.arange(max_side, device=device)
    di = off.repeat_interleave(max_side)  # (S*S,)
    dj = off.repeat(max_side)  # (S*S,)
    cf = f0[..., None] + di  # (B, K, S*S)
    ct = t0[..., None] + dj  # (B, K, S*S)
    s = side[..., None]  # (B, 1, 1)
    valid = (di < s) & (dj < s) & (cf >= 0) & (cf < f_dim) & (ct >= 0) & (ct < t_dim)
    cell = torch.where(valid, cf * t_dim + ct, torch.full_like(cf, n))  # invalid cells -> dummy slot n

    # Rank of each cell = index of the first cluster covering it; uncovered cells rank after all.
    order = torch.arange(k, device=device, dtype=torch.float32).view(1, k, 1).expand_as(cf)
    rank = torch.full((batch, n + 1), float(k), device=device)
    rank.scatter_reduce_(1, cell.flatten(1), order.flatten(1), reduce="amin", include_self=True)
    rank = rank[:, :n]  # (B, N)
    # Random tie-break inside a cluster (and among uncovered cells).
    rank = rank + torch.rand(batch, n, generator=generator, device=device)
    idx = rank.topk(mask_size, dim=1, largest=False).indices  # (B, M)
    return idx.sort(dim=1).values


def legacy_cluster_mask(num_patches: int, t_dim: int, mask_size: int, rng=_random, cluster: int = 3) -> torch.Tensor:
    """The 2021 SSAST cluster sampler for one clip, draw for draw (see the module docstring).

    ``rng`` is Python's ``random`` module (as the 2021 code used) or a ``random.Random``.
    """
    # The 2021 loop stops only after more than M distinct indices, and never uses index 0.
    if not 0 < mask_size < num_patches - 1:
        raise ValueError(f"the 2021 sampler needs 0 < mask_patch < {num_patches - 1}, got {mask_size}")
    chosen: list[int] = []
    side = rng.randrange(cluster) + 3
    while len(set(chosen)) <= mask_size:
        corner = rng.randrange(num_patches)
        for i in range(side):
            for j in range(side):
                cand = corner + t_dim * i + j
                if 0 < cand < num_patches:
                    chosen.append(cand)
    return torch.tensor(list(set(chosen))[:mask_size])


def legacy_uniform_mask(num_patches: int, mask_size: int, rng=_random) -> torch.Tensor:
    """The 2021 SSAST frame sampler for one clip (``rng.sample`` of the positions)."""
    _check_counts(num_patches, mask_size)
    return torch.tensor(rng.sample(range(num_patches), mask_size))


def legacy_mask(
    batch: int, grid: tuple[int, int], mask_size: int, *, cluster: bool = True, rng=_random
) -> torch.Tensor:
    """(B, M) masks drawn clip by clip with the 2021 samplers, in the 2021 call order."""
    f_dim, t_dim = grid
    n = f_dim * t_dim
    rows = [
        legacy_cluster_mask(n, t_dim, mask_size, rng) if cluster else legacy_uniform_mask(n, mask_size, rng)
        for _ in range(batch)
    ]
    return torch.stack(rows)
