"""Pluggable training objectives: what a step computes, and how validation scores the model.

The loop knows an objective only through this interface (:class:`Objective`):

- ``train_step(model, x, batch, generator) -> (loss, metrics)``: the loss to back-propagate and
  a dict of scalar tensors to log (``loss`` among them);
- ``evaluator()``: an object that takes validation batches (``update(model, x, batch)``; a
  ``None`` batch means "run the forward pass, count nothing", for a rank that has run out of
  clips) and returns the metrics over all ranks (``compute()``);
- ``metric`` and ``mode``: the validation metric that picks the best checkpoint and drives the
  plateau schedule, and whether higher (``max``) or lower (``min``) is better.

:class:`MaskedPatchObjective` is SSAST's: masked-patch classification (InfoNCE over the masked
patches, ``mpc``), reconstruction (MSE, ``mpg``), or both (``joint``: ``nce + mpg_weight * mse``),
in one encoder pass over one masked input, or (``two_pass``, the 2021 schedule) in two passes
with two masks. A fine-tuning objective plugs into the same loop.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .. import seeds
from ..masking import cluster_mask, uniform_mask
from .distributed import all_reduce_sum

OBJECTIVES = ("joint", "mpc", "mpg")


class Evaluator(Protocol):
    def update(self, model, x: torch.Tensor, batch: dict | None) -> None: ...
    def compute(self) -> dict[str, float]: ...


class Objective(Protocol):
    metric: str
    mode: str

    def train_step(self, model, x: torch.Tensor, batch: dict, generator: torch.Generator | None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def evaluator(self) -> Evaluator: ...
    def to_dict(self) -> dict: ...


class MaskedPatchObjective:
    """SSAST's masked-patch objectives (see the module docstring).

    ``model`` in the methods is an :class:`ssast.ASTModel` or a wrapper that forwards its call
    (a DeepSpeed engine); ``config`` is the model's geometry (for the validation masks).
    """

    def __init__(self, config, objective: str = "joint", mask_patch: int = 400, cluster: bool = True,
                 two_pass: bool = False, mpg_weight: float = 10.0, seed: int = 0):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if two_pass and objective != "joint":
            raise ValueError("--two-pass applies to the joint objective (mpc and mpg in two encoder passes)")
        if not 0 < mask_patch <= config.num_patches:
            raise ValueError(f"mask-patch must be in [1, {config.num_patches}] (the model's {config.f_dim}x"
                             f"{config.t_dim} patch grid), got {mask_patch}")
        self.config, self.objective, self.mask_patch, self.cluster = config, objective, mask_patch, cluster
        self.two_pass, self.mpg_weight, self.seed = two_pass, mpg_weight, seed
        # Validation: the masked-patch accuracy, or the reconstruction error where there is none.
        self.metric, self.mode = ("mse", "min") if objective == "mpg" else ("acc", "max")

    def to_dict(self) -> dict:
        return {"objective": self.objective, "mask_patch": self.mask_patch, "cluster": self.cluster,
                "two_pass": self.two_pass, "mpg_weight": self.mpg_weight}

    def _masked(self, model, x, task, generator=None, mask_index=None):
        return model(x, task, cluster=self.cluster, mask_patch=self.mask_patch, mask_index=mask_index,
                     generator=generator)

    def losses(self, model, x: torch.Tensor, generator: torch.Generator | None = None,
               mask_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``loss`` and its parts (``acc``, ``nce``, ``mse`` as the objective has them) for a batch."""
        if self.objective == "mpg":
            mse = self._masked(model, x, "pretrain_mpg", generator, mask_index)
            return {"loss": mse, "mse": mse}
        if self.objective == "mpc":
            acc, nce = self._masked(model, x, "pretrain_mpc", generator, mask_index)
            return {"loss": nce, "acc": acc, "nce": nce}
        if self.two_pass:
            # The 2021 schedule: a second encoder pass, over a second mask, for the reconstruction.
            acc, nce = self._masked(model, x, "pretrain_mpc", generator, mask_index)
            mse = self._masked(model, x, "pretrain_mpg", generator, mask_index)
        else:
            acc, nce, mse = self._masked(model, x, "pretrain_joint", generator, mask_index)
        return {"loss": nce + self.mpg_weight * mse, "acc": acc, "nce": nce, "mse": mse}

    def train_step(self, model, x, batch, generator):
        out = self.losses(model, x, generator)
        return out["loss"], {k: v.detach() for k, v in out.items()}

    def fixed_masks(self, batch: dict, device) -> torch.Tensor:
        """(B, M) masks for validation clips, each drawn from a generator seeded by the clip's name.

        A clip gets the same mask at every validation, whatever the batch or rank it lands in.
        """
        rows = []
        for key in batch["path"]:
            g = seeds.generator(self.seed, "valid-mask", str(key))
            if self.cluster:
                rows.append(cluster_mask(1, self.config.grid, self.mask_patch, generator=g))
            else:
                rows.append(uniform_mask(1, self.config.num_patches, self.mask_patch, generator=g))
        return torch.cat(rows).to(device)  # (B, M)

    def evaluator(self) -> "MaskedPatchEvaluator":
        return MaskedPatchEvaluator(self)


class MaskedPatchEvaluator:
    """Clip-weighted means of accuracy, InfoNCE and MSE over the validation set, all ranks pooled.

    Every masked patch is scored once per clip with the clip's fixed mask; in two-pass mode both
    objectives see that one mask.
    """

    NAMES = ("acc", "nce", "mse")

    def __init__(self, objective: MaskedPatchObjective):
        self.objective = objective
        self.sums = torch.zeros(len(self.NAMES) + 1, dtype=torch.float64)  # metrics..., clips

    @torch.no_grad()
    def update(self, model, x: torch.Tensor, batch: dict | None) -> None:
        o = self.objective
        if batch is None:  # a forward pass that counts nothing, so that every rank runs as many
            g = torch.Generator(device=x.device).manual_seed(0)
            o.losses(model, x, generator=g)
            return
        out = o.losses(model, x, mask_index=o.fixed_masks(batch, x.device))
        b = x.shape[0]
        for i, name in enumerate(self.NAMES):
            if name in out:
                self.sums[i] += float(out[name]) * b  # the model's values are means over the batch
        self.sums[-1] += b

    def compute(self) -> dict[str, float]:
        total = all_reduce_sum(self.sums)
        clips = float(total[-1])
        if clips == 0:
            raise ValueError("the validation set gave no clips (all unreadable?)")
        have = {"mpg": ("mse",), "mpc": ("acc", "nce")}.get(self.objective.objective, self.NAMES)
        out = {name: float(total[i]) / clips for i, name in enumerate(self.NAMES) if name in have}
        out["clips"] = int(clips)
        return out
