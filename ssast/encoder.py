"""The spectrogram Transformer encoder: patch projection, prefix tokens, ViT blocks.

Parameter names follow timm's VisionTransformer (``patch_embed.proj``, ``cls_token``,
``dist_token``, ``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.mlp.fc1``, ``norm``), so released checkpoints map onto this module by stripping a
prefix. The MLP and the initialisation are timm's public layers (``timm.layers.Mlp``,
``trunc_normal_``). The block and its attention are written here, as the same pre-norm ViT block
(the same numbers as timm's ``Block`` within float rounding), because two measured gains need
what timm's block does not offer through its interface: the attention kernel chosen per call
(:meth:`ASTEncoder.set_attention`: explicit matrix products train 1.6x faster than the fused
kernel in bfloat16 on a CPU), and a last block that computes the prefix tokens' outputs only,
all a cls-token head reads (about 6% of an inference pass of the base model).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .objectives import patchify

ATTENTION = ("auto", "fused", "explicit")


class Attention(nn.Module):
    """Multi-head self-attention (timm's parameter names ``qkv`` and ``proj``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, fused: bool = True, queries: int | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D), or (B, queries, D) for the first ``queries`` tokens only
        (the others still serve as keys and values)."""
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        if queries is None:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        else:
            w, bias = self.qkv.weight, self.qkv.bias  # (3D, D): queries, keys, values stacked
            q = F.linear(x[:, :queries], w[:d], bias[:d]).reshape(b, queries, h, hd).transpose(1, 2)  # (B, H, P, hd)
            k, v = F.linear(x, w[d:], bias[d:]).reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if fused:
            o = F.scaled_dot_product_attention(q, k, v)  # (B, H, Nq, hd)
        else:
            o = (q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (B, H, Nq, hd)
        return self.proj(o.transpose(1, 2).reshape(b, -1, d))  # (B, Nq, D)


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, fused: bool = True, queries: int | None = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), fused, queries)
        x = (x if queries is None else x[:, :queries]) + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """(B, 1, F, T) spectrogram -> (B, f*t, D) patch tokens, frequency-major.

    The weights are a ``Conv2d``'s (timm's ``patch_embed.proj``). When the patches do not
    overlap (stride = patch shape, as in pretraining) the projection is one matrix product over
    the patches (:meth:`project`), which a pretraining step also reuses for its reconstruction
    targets: forward and backward under bf16 autocast on a (8, 1, 128, 1024) input on one core
    took 75 ms with oneDNN's one-channel convolution, 3 ms as patch extraction and matrix product.
    """

    def __init__(self, embed_dim: int, patch: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=stride)

    @property
    def non_overlapping(self) -> bool:
        return tuple(self.proj.kernel_size) == tuple(self.proj.stride)

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, fshape*tshape) patches (:func:`ssast.objectives.patchify`) -> (B, N, D) tokens."""
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.non_overlapping:
            return self.project(patchify(x, *self.proj.kernel_size))  # (B, f*t, D)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, f*t, D)


class ASTEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.grid = cfg.grid
        self.patch_embed = PatchEmbed(d, (cfg.fshape, cfg.tshape), (cfg.fstride, cfg.tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.num_prefix_tokens == 2 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens + cfg.num_patches, d))
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, norm) for _ in range(cfg.depth))
        self.norm = norm(d)
        self.grad_checkpointing = False
        self.attention = "auto"
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def set_attention(self, impl: str) -> None:
        """Attention kernel: "fused" (PyTorch's scaled_dot_product_attention), "explicit"
        (matmul, softmax, matmul) or "auto".

        "auto" uses the fused kernel except when training in bfloat16 on a CPU, where the
        explicit form runs on oneDNN's bf16 matrix products and its backward pass is much
        faster: a tiny-model pretraining step (batch 8, 1024 frames) took 0.74 s fused and
        0.47 s explicit on a 2-core AVX512-BF16 CPU. In fp32 the two are within 5%, and for
        inference (no gradients) the fused kernel is faster.
        """
        if impl not in ATTENTION:
            raise ValueError(f"attention must be 'auto', 'fused' or 'explicit', got {impl!r}")
        self.attention = impl

    def _use_fused_attention(self, x: torch.Tensor) -> bool:
        if self.attention != "auto":
            return self.attention == "fused"
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return True
        bf16 = x.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
        return not bf16

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        tokens = [self.cls_token] if self.dist_token is None else [self.cls_token, self.dist_token]
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)  # (B, P, D)

    def forward(self, patches: torch.Tensor, prefix_only: bool = False) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, P + N, D) normalised outputs, prefix tokens first.

        ``prefix_only``: return the prefix tokens' outputs alone (B, P, D), all a cls-token head
        reads. The last block then computes only their queries, attention outputs and MLP (the
        other tokens still serve as keys and values): the same numbers for less work.
        """
        x = torch.cat([self.prefix_tokens(patches.shape[0]), patches], dim=1)
        x = x + self.pos_embed
        fused = self._use_fused_attention(x)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            queries = self.num_prefix_tokens if prefix_only and i == last else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, fused, queries, use_reentrant=False)
            else:
                x = blk(x, fused, queries)
        return self.norm(x)  # (B, P + N, D), or (B, P, D) with prefix_only
