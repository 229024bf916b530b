"""``ASTModel``: the SSAST/AST model behind the interface of the SSAST README.

Inside, three pieces: the encoder (:mod:`ssast.encoder`), the masking
(:mod:`ssast.masking`) and the objectives (:mod:`ssast.objectives`). The forward path is
written once: patch tokens -> (optional masking) -> encoder -> task head. The joint
pretraining objective uses one encoder pass over one masked input for both heads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import masking
from .config import ModelConfig, grid_size
from .encoder import ASTEncoder
from .objectives import identified_patches, masked_patch_infonce, masked_patch_mse, patchify, unpatchify

FINETUNE_TASKS = ("ft_avgtok", "ft_cls")
PRETRAIN_TASKS = ("pretrain_mpc", "pretrain_mpg", "pretrain_joint", "visualize_mask")


@dataclass
class MaskVisualization:
    """What ``task='visualize_mask'`` returns; images are (B, 1, F, T) like the input spectrogram.

    ``identified``: the input with every masked patch set to ``fill`` if the classification
    head picked it out correctly and to 0 otherwise. ``masked``: the input with every masked
    patch set to ``fill``. ``mask_index`` (B, M) and ``correct`` (B, M) give the same per patch.
    Unpacks as ``identified, masked = ...``, like the 2021 code's return value.
    """

    identified: torch.Tensor
    masked: torch.Tensor
    mask_index: torch.Tensor
    correct: torch.Tensor

    def __iter__(self):
        return iter((self.identified, self.masked))


def _mlp_head(d: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, k))


def _pred_head(d: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, k))


class ASTModel(nn.Module):
    """Audio Spectrogram Transformer for masked-patch pretraining and fine-tuning.

    Arguments are those of the SSAST README. ``pretrain_stage=True`` builds the pretraining
    model (mask token and the two pretraining heads; stride must equal patch shape), from
    scratch or, with ``load_pretrained_mdl_path``, continuing from a checkpoint.
    ``pretrain_stage=False`` builds a fine-tuning model (encoder plus ``mlp_head``) whose encoder
    comes from ``load_pretrained_mdl_path`` (a released or project checkpoint), from AST's
    supervised initialisations (``imagenet_pretrain``, ``audioset_pretrain``) or from scratch.
    The positional grid and patch projection are adapted to the requested strides and input
    size.
    """

    def __init__(
        self,
        label_dim: int = 527,
        fshape: int = 128,
        tshape: int = 2,
        fstride: int = 128,
        tstride: int = 2,
        input_fdim: int = 128,
        input_tdim: int = 1024,
        model_size: str = "base",
        pretrain_stage: bool = True,
        load_pretrained_mdl_path: str | os.PathLike | None = None,
        *,
        imagenet_pretrain: bool = False,
        audioset_pretrain: bool = False,
        config: ModelConfig | None = None,
    ):
        super().__init__()
        if config is None:
            config = ModelConfig.from_size(
                model_size, fshape=fshape, tshape=tshape, fstride=fstride, tstride=tstride,
                input_fdim=input_fdim, input_tdim=input_tdim, label_dim=label_dim,
                stage="pretrain" if pretrain_stage else "finetune",
            )
            sources = [load_pretrained_mdl_path is not None, imagenet_pretrain, audioset_pretrain]
            if sum(sources) > 1:
                raise ValueError("choose one of load_pretrained_mdl_path, imagenet_pretrain and audioset_pretrain")
            if pretrain_stage and (imagenet_pretrain or audioset_pretrain):
                raise ValueError("imagenet_pretrain/audioset_pretrain initialise fine-tuning models (pretrain_stage=False)")
        config.validate()
        self.config = config
        self._build()
        if load_pretrained_mdl_path is not None or imagenet_pretrain or audioset_pretrain:
            # The facade of the SSAST README over the one loader (which builds ASTModels itself,
            # hence imported here rather than at the top).
            from .loading import initialize

            initialize(self, load_pretrained_mdl_path, imagenet=imagenet_pretrain, audioset=audioset_pretrain)

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        cfg = self.config
        self.v = ASTEncoder(cfg)
        if cfg.stage == "pretrain":
            # Learnable mask token (BEiT style) and the two pretraining heads, both mapping a
            # token to the fshape*tshape values of its patch.
            self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.zeros(1, 1, cfg.embed_dim)))
            self.cpredlayer = _pred_head(cfg.embed_dim, cfg.patch_dim)
            self.gpredlayer = _pred_head(cfg.embed_dim, cfg.patch_dim)
        else:
            self.mlp_head = _mlp_head(cfg.embed_dim, cfg.label_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    @property
    def stage(self) -> str:
        return self.config.stage

    # ------------------------------------------------------------------ building blocks
    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T frames, F bins) -> (B, 1, F, T), checking the size against the config."""
        cfg = self.config
        if x.dim() != 3:
            raise ValueError(f"expected input of shape (batch, frames, mel bins), got {tuple(x.shape)}")
        if x.shape[2] != cfg.input_fdim:
            raise ValueError(f"input has {x.shape[2]} mel bins, the model was built for input_fdim={cfg.input_fdim}")
        return x.unsqueeze(1).transpose(2, 3)

    def _check_grid(self, spec: torch.Tensor) -> None:
        cfg = self.config
        t = grid_size(spec.shape[-1], cfg.tshape, cfg.tstride)
        if t != cfg.t_dim:
            raise ValueError(
                f"input has {spec.shape[-1]} frames ({t} time patches); the model was built for "
                f"input_tdim={cfg.input_tdim} ({cfg.t_dim} time patches). Pad or crop the input, or build "
                "the model with that input_tdim."
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrogram -> (B, P + N, D) encoder outputs, prefix tokens first."""
        spec = self.spectrogram(x)
        self._check_grid(spec)
        return self.v(self.v.patch_embed(spec))

    def pool(self, h: torch.Tensor, task: str) -> torch.Tensor:
        """Clip-level representation: mean of patch tokens (ft_avgtok) or of prefix tokens (ft_cls)."""
        p = self.num_prefix_tokens
        if task == "ft_avgtok":
            return h[:, p:].mean(dim=1)  # (B, D)
        return h[:, :p].mean(dim=1)  # (B, D): (cls + dist) / 2, or cls alone

    def make_mask(
        self,
        batch: int,
        mask_patch: int,
        *,
        cluster: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """(B, M) patch positions to mask: square clusters (cluster=True) or uniform."""
        if cluster:
            return masking.cluster_mask(batch, self.config.grid, mask_patch, generator=generator, device=device)
        return masking.uniform_mask(batch, self.config.num_patches, mask_patch, generator=generator, device=device)

    def _check_mask_index(self, mask_index: torch.Tensor, batch: int, device) -> torch.Tensor:
        n = self.config.num_patches
        if mask_index.dim() != 2 or mask_index.shape[0] != batch:
            raise ValueError(f"mask_index must be (batch={batch}, M), got {tuple(mask_index.shape)}")
        mask_index = mask_index.to(device=device, dtype=torch.long)
        if mask_index.numel() and (mask_index.min() < 0 or mask_index.max() >= n):
            raise ValueError(f"mask_index values must be patch positions in [0, {n})")
        srt = mask_index.sort(dim=1).values
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("mask_index has a repeated position in a row; masked positions must be distinct")
        return mask_index

    def masked_forward(
        self,
        x: torch.Tensor,
        mask_index: torch.Tensor | None = None,
        *,
        mask_patch: int = 400,
        cluster: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One encoder pass over a masked input.

        Returns the encoder outputs at the masked positions (B, M, D), the true values of the
        masked patches (B, M, fshape*tshape) and the mask (B, M).
        """
        if self.stage != "pretrain":
            raise ValueError("masked pretraining tasks need a pretraining-stage model (pretrain_stage=True)")
        cfg = self.config
        spec = self.spectrogram(x)
        self._check_grid(spec)
        b = spec.shape[0]
        if mask_index is None:
            mask_index = self.make_mask(b, mask_patch, cluster=cluster, generator=generator, device=spec.device)
        else:
            mask_index = self._check_mask_index(mask_index, b, spec.device)
        # Patches extracted once: the projection's input and the reconstruction targets.
        patches = patchify(spec, cfg.fshape, cfg.tshape)  # (B, N, K)
        target = patches.gather(1, mask_index[..., None].expand(-1, -1, patches.shape[-1]))  # (B, M, K)
        tokens = self.v.patch_embed.project(patches)  # (B, N, D)
        is_masked = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        is_masked.scatter_(1, mask_index, True)  # (B, N)
        tokens = torch.where(is_masked[..., None], self.mask_embed.to(tokens.dtype), tokens)
        h = self.v(tokens)  # (B, P + N, D)
        idx = (mask_index + self.num_prefix_tokens)[..., None].expand(-1, -1, h.shape[-1])
        return h.gather(1, idx), target, mask_index  # (B, M, D), (B, M, K), (B, M)

    # ------------------------------------------------------------------ the facade
    def forward(
        self,
        x: torch.Tensor,
        task: str | None = None,
        cluster: bool = True,
        mask_patch: int = 400,
        mask_index: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ):
        """Run ``task`` on a batch of spectrograms ``x`` (batch, frames, mel bins).

        - ``ft_avgtok`` / ``ft_cls``: logits (B, label_dim). ``None`` means the model's default.
        - ``pretrain_mpc``: (accuracy, InfoNCE loss); ``pretrain_mpg``: MSE;
          ``pretrain_joint``: (accuracy, InfoNCE, MSE) from one encoder pass;
          ``visualize_mask``: a :class:`MaskVisualization`.

        Masks: ``mask_index`` (B, M) if given, else ``mask_patch`` positions per clip drawn with
        ``generator``, in square clusters (``cluster=True``, patch models) or uniformly.
        """
        if task is None:
            task = self.config.default_task if self.stage == "finetune" else "pretrain_joint"
        if task in FINETUNE_TASKS:
            if self.stage != "finetune":
                raise ValueError(
                    f"task {task!r} needs a fine-tuning model with a classification head; this model is at "
                    "the pretraining stage (build it with pretrain_stage=False)"
                )
            if task == "ft_cls":
                # the cls head reads the prefix tokens only: skip the rest of the last block
                spec = self.spectrogram(x)
                self._check_grid(spec)
                return self.mlp_head(self.v(self.v.patch_embed(spec), prefix_only=True).mean(dim=1))
            return self.mlp_head(self.pool(self.encode(x), task))
        if task not in PRETRAIN_TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(FINETUNE_TASKS + PRETRAIN_TASKS)}")

        h, target, mask_index = self.masked_forward(
            x, mask_index, mask_patch=mask_patch, cluster=cluster, generator=generator
        )
        if task == "pretrain_mpg":
            return masked_patch_mse(self.gpredlayer(h), target)
        pred = self.cpredlayer(h)
        if task == "pretrain_mpc":
            return masked_patch_infonce(pred, target)
        if task == "pretrain_joint":
            acc, nce = masked_patch_infonce(pred, target)
            return acc, nce, masked_patch_mse(self.gpredlayer(h), target)
        return self._visualize(x, pred, target, mask_index)

    @torch.no_grad()
    def _visualize(self, x, pred, target, mask_index, fill: float = 99.0) -> MaskVisualization:
        cfg = self.config
        spec = self.spectrogram(x)
        patches = patchify(spec, cfg.fshape, cfg.tshape)  # (B, N, K)
        correct = identified_patches(pred, target)  # (B, M)
        idx = mask_index[..., None].expand(-1, -1, patches.shape[-1])
        masked = patches.scatter(1, idx, torch.full(idx.shape, fill, dtype=patches.dtype, device=patches.device))
        marks = (correct.to(patches.dtype) * fill)[..., None].expand(-1, -1, patches.shape[-1])
        identified = patches.scatter(1, idx, marks)
        # The grid may not cover the last frames/bins when the size is no multiple of the patch.
        size = (cfg.f_dim * cfg.fshape, cfg.t_dim * cfg.tshape)
        return MaskVisualization(
            unpatchify(identified, size, cfg.fshape, cfg.tshape),
            unpatchify(masked, size, cfg.fshape, cfg.tshape),
            mask_index,
            correct,
        )

    # ------------------------------------------------------------------ conveniences
    @classmethod
    def from_config(cls, config: ModelConfig) -> "ASTModel":
        return cls(config=config)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.v.set_grad_checkpointing(enable)


__all__ = ["ASTModel", "MaskVisualization"]
