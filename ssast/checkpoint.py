"""Reading and writing checkpoints: the released 2021 format and the project's own.

Released format (SSAST and AST releases): the ``state_dict()`` of a model wrapped in
``torch.nn.DataParallel``, keys ``module.v.*`` for the encoder, ``module.mask_embed``,
``module.cpredlayer.*``, ``module.gpredlayer.*`` and the int64 scalars
``module.p_input_fdim``/``module.p_input_tdim`` for pretraining models, ``module.mlp_head.*``
for fine-tuned ones, and timm's unused ImageNet heads ``module.v.head*``.

Project format: a dict ``{"format": "ssast", "version": 1, "config": ModelConfig fields,
"state_dict": ..., "features": dict | None, "labels": list | None, "meta": dict}`` whose
state-dict keys are this package's module names (the released names without ``module.``).

Every file is read with ``torch.load(..., weights_only=True)``: a pickle that would run code is
refused. Problems are reported as :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import SIZES, ModelConfig, grid_size, size_from_width
from .files import atomic_save

FORMAT_NAME = "ssast"
FORMAT_VERSION = 1

# Keys present in released files that no model here uses.
_RELEASED_UNUSED = ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias")
_PRETRAIN_KEYS = ("mask_embed", "cpredlayer.", "gpredlayer.")


class CheckpointError(ValueError):
    """A file is not a usable checkpoint; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


@dataclass
class Checkpoint:
    """A checkpoint read from disk, whatever its format."""

    path: str
    format: str  # "released" or "ssast"
    config: ModelConfig  # geometry read from the file (strides are a guess for released files)
    state: dict[str, torch.Tensor]  # canonical keys (no "module." prefix, no unused heads)
    pretrain_input: tuple[int, int] | None = None  # (fdim, tdim) recorded by released pretraining files
    features: dict | None = None
    labels: list | None = None  # display names of the outputs, in order
    meta: dict = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)  # what the file does not say and was filled in

    @property
    def stage(self) -> str:
        return self.config.stage

    @property
    def has_head(self) -> bool:
        return any(k.startswith("mlp_head.") for k in self.state)


def load_file(path: str | os.PathLike, map_location: Any = "cpu", allow: tuple = ()) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain containers and the ``allow``ed
    classes only; anything else (a pickle that could run code) raises :class:`CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        blocked = [ln for ln in lines if "GLOBAL" in ln]
        if blocked:
            raise CheckpointError(
                path,
                "refused to unpickle: the file holds Python objects other than tensors and plain "
                "containers, and loading it could run code; ssast's checkpoints and run folders hold none "
                f"({blocked[0]})",
            ) from None
        detail = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the"))
                  and "WeightsUnpickler error" not in ln]
        raise CheckpointError(path, f"not a PyTorch checkpoint ({detail[0] if detail else 'unreadable pickle'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"not a PyTorch checkpoint ({first})") from None


def _strip_module(sd: dict[str, Any]) -> dict[str, Any]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _num_blocks(state: dict[str, torch.Tensor]) -> int:
    ids = {int(k.split(".")[2]) for k in state if k.startswith("v.blocks.") and k.split(".")[2].isdigit()}
    return max(ids) + 1 if ids else 0


def infer_config(state: dict[str, torch.Tensor], path: str | None = None, **geometry) -> ModelConfig:
    """Model geometry from the weights: width, depth, prefix tokens, patch shape, stage, labels.

    Strides and input size are not stored in released files; they come from ``geometry``
    (default: non-overlapping patches on a 128 x 1024 input) and are checked against the
    positional embedding by the caller.
    """
    w = state.get("v.patch_embed.proj.weight")
    if w is None or w.dim() != 4:
        raise CheckpointError(path, "not an SSAST/AST checkpoint: it has no patch projection 'v.patch_embed.proj.weight'")
    if w.shape[1] != 1:
        raise CheckpointError(
            path, f"the patch projection takes {w.shape[1]} input channels; spectrogram models take 1 "
            "(an ImageNet ViT/DeiT state dict is loaded with imagenet_pretrain, not as a checkpoint)"
        )
    embed_dim, fshape, tshape = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
    num_prefix = 2 if "v.dist_token" in state else 1
    size = size_from_width(embed_dim, num_prefix)
    num_heads = SIZES[size]["num_heads"] if size else max(1, embed_dim // 64)
    mlp_w = state.get("v.blocks.0.mlp.fc1.weight")
    mlp_ratio = float(mlp_w.shape[0]) / embed_dim if mlp_w is not None else 4.0
    pretrain = any(k.startswith(_PRETRAIN_KEYS) for k in state)
    label_dim = int(state["mlp_head.1.weight"].shape[0]) if "mlp_head.1.weight" in state else 527
    geo = dict(fstride=fshape, tstride=tshape, input_fdim=128, input_tdim=1024)
    geo.update({k: v for k, v in geometry.items() if v is not None})
    if pretrain:  # pretraining always uses non-overlapping patches
        geo.update(fstride=fshape, tstride=tshape)
    return ModelConfig(
        embed_dim=embed_dim, depth=_num_blocks(state), num_heads=num_heads, num_prefix_tokens=num_prefix,
        mlp_ratio=mlp_ratio, fshape=fshape, tshape=tshape, label_dim=label_dim,
        model_size=size or "custom", stage="pretrain" if pretrain else "finetune", **geo,
    )


def infer_grid(cfg: ModelConfig, num_positions: int, path: str | None = None) -> tuple[int, int]:
    """The patch grid a positional embedding was trained on, given its frequency geometry."""
    f_dim = grid_size(cfg.input_fdim, cfg.fshape, cfg.fstride)
    n = num_positions - cfg.num_prefix_tokens
    if n <= 0 or n % f_dim:
        raise CheckpointError(
            path,
            f"the positional embedding has {n} patch positions, which is no whole number of time steps "
            f"for {f_dim} frequency patches (input_fdim={cfg.input_fdim}, fshape={cfg.fshape}, "
            f"fstride={cfg.fstride}); check the strides and input_fdim",
        )
    return f_dim, n // f_dim


def read_checkpoint(path: str | os.PathLike, **geometry) -> Checkpoint:
    """Read a released-format or project-format checkpoint (see the module docstring)."""
    obj = load_file(path)
    path = str(path)
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"not an SSAST/AST checkpoint: it holds a {type(obj).__name__}, not a state dict")
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(path, f"ssast checkpoint version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:
            cfg = ModelConfig.from_dict(obj["config"])
            state = obj["state_dict"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"broken ssast checkpoint: {e}") from None
        return Checkpoint(path, "ssast", cfg, dict(state), features=obj.get("features"),
                          labels=obj.get("labels"), meta=dict(obj.get("meta") or {}))

    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        keys = ", ".join(list(map(str, obj))[:5])
        raise CheckpointError(path, f"not an SSAST/AST checkpoint: expected a state dict of tensors, found keys {keys}")
    state = _strip_module(obj)
    pretrain_input = None
    if "p_input_fdim" in state and "p_input_tdim" in state:
        pretrain_input = (int(state["p_input_fdim"].item()), int(state["p_input_tdim"].item()))
    state = {k: v for k, v in state.items() if k not in _RELEASED_UNUSED and not k.startswith("p_input_")}
    if pretrain_input is not None:
        geometry = {**geometry, "input_fdim": pretrain_input[0], "input_tdim": pretrain_input[1]}
    cfg = infer_config(state, path, **geometry)
    return Checkpoint(path, "released", cfg, state, pretrain_input=pretrain_input)


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    features: dict | None = None,
    labels: list | None = None,
    meta: dict | None = None,
) -> None:
    """Save a model in the project format: weights, model config, feature settings, label names."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": model.config.to_dict(),
            "state_dict": state,
            "features": features,
            "labels": list(labels) if labels is not None else None,
            "meta": dict(meta or {}),
        },
        path,
    )


def released_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the released key names (``module.`` prefix, DataParallel layout).

    Pretraining models also get ``p_input_fdim``/``p_input_tdim``; timm's ImageNet heads, which
    no model uses but released files carry, are written as zeros so that strict loaders work.
    """
    cfg = model.config
    out = {f"module.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    d = cfg.embed_dim
    heads = ("head", "head_dist") if cfg.num_prefix_tokens == 2 else ("head",)
    for h in heads:
        out[f"module.v.{h}.weight"] = torch.zeros(1000, d)
        out[f"module.v.{h}.bias"] = torch.zeros(1000)
    if cfg.stage == "pretrain":
        out["module.p_input_fdim"] = torch.tensor(cfg.input_fdim)
        out["module.p_input_tdim"] = torch.tensor(cfg.input_tdim)
    return out


def save_released(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Save in the released 2021 format (read by the official code and s3prl's ssast upstream)."""
    atomic_save(released_state_dict(model), path)
