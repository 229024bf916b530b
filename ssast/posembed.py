"""Resampling of the learned positional grid between patch grids.

A model pretrained on one (frequency x time) patch grid is fine-tuned on another whenever the
stride or the clip length changes. Each axis is adapted on its own, time first and then
frequency, as the SSAST and AST code do: a centred crop when the new axis is shorter, bilinear
interpolation (``align_corners=False``) when it is longer or equal.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _crop_start(src: int, dst: int) -> int:
    # Centre crop; the same rounding as the released code (int(src/2) - int(dst/2)).
    return src // 2 - dst // 2


def resample_grid(grid: torch.Tensor, dst: tuple[int, int]) -> torch.Tensor:
    """Adapt a positional grid (1, D, F, T) to (1, D, f, t), time axis first."""
    if grid.dim() != 4:
        raise ValueError(f"expected a (1, D, F, T) grid, got shape {tuple(grid.shape)}")
    f_dst, t_dst = dst
    f_src, t_src = grid.shape[-2:]
    if t_dst < t_src:
        s = _crop_start(t_src, t_dst)
        grid = grid[..., s:s + t_dst]
    elif t_dst != t_src:
        grid = F.interpolate(grid, size=(f_src, t_dst), mode="bilinear", align_corners=False)
    if f_dst < f_src:
        s = _crop_start(f_src, f_dst)
        grid = grid[..., s:s + f_dst, :]
    elif f_dst != f_src:
        grid = F.interpolate(grid, size=(f_dst, t_dst), mode="bilinear", align_corners=False)
    return grid


def resample_pos_embed(
    pos_embed: torch.Tensor, num_prefix_tokens: int, src_grid: tuple[int, int], dst_grid: tuple[int, int]
) -> torch.Tensor:
    """Adapt a positional embedding (1, P + F*T, D) to a new patch grid (1, P + f*t, D).

    Patch tokens are in frequency-major order (index = f * T + t); the P prefix tokens'
    embeddings are kept as they are.
    """
    _, n, d = pos_embed.shape
    f_src, t_src = src_grid
    if n != num_prefix_tokens + f_src * t_src:
        raise ValueError(
            f"positional embedding has {n} positions, expected {num_prefix_tokens} prefix + "
            f"{f_src}x{t_src} grid = {num_prefix_tokens + f_src * t_src}"
        )
    if tuple(dst_grid) == (f_src, t_src):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = patches.transpose(1, 2).reshape(1, d, f_src, t_src)  # (1, D, F, T)
    grid = resample_grid(grid, dst_grid)  # (1, D, f, t)
    patches = grid.flatten(2).transpose(1, 2)  # (1, f*t, D)
    return torch.cat([prefix, patches], dim=1)
