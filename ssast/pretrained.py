"""Supervised initialisations of the AST paper: ImageNet DeiT weights and AST's AudioSet model.

Weights are looked up in ``$SSAST_PRETRAINED_DIR`` (default ``~/.cache/ssast``) and downloaded
there when missing: the DeiT weights through timm (from the Hugging Face hub), the AudioSet
model from the AST release URL (or ``$SSAST_MIRROR``, see :mod:`ssast.download`). On a machine
without internet access, put the files there by hand; the error message says which file goes
where.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import registry
from .checkpoint import CheckpointError, load_file
from .config import DEIT_NAMES, ModelConfig
from .download import cache_dir
from .files import atomic_save

AUDIOSET_RELEASE = registry.resolve("audioset_10_10_0.4593")
AUDIOSET_URL = AUDIOSET_RELEASE.url
AUDIOSET_FILE = AUDIOSET_RELEASE.file


def pretrained_dir() -> Path:
    """The model cache: ``$SSAST_PRETRAINED_DIR``, default ``~/.cache/ssast``."""
    return cache_dir()


def imagenet_state_dict(model_size: str) -> tuple[dict[str, torch.Tensor], Path]:
    """timm's ImageNet DeiT weights for a size, from the cache or downloaded through timm."""
    name = DEIT_NAMES.get(model_size)
    if name is None:
        raise ValueError(f"no ImageNet DeiT model is known for model_size {model_size!r}")
    dest = pretrained_dir() / f"{name}.pth"
    if not dest.exists():
        try:
            import timm

            net = timm.create_model(name, pretrained=True)  # fetches from the Hugging Face hub
            atomic_save(net.state_dict(), dest)
        except Exception as e:
            raise FileNotFoundError(
                f"{dest} is missing and timm could not download the ImageNet weights of {name!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with internet "
                f"access run: python -c \"import timm, torch; torch.save(timm.create_model('{name}', "
                f"pretrained=True).state_dict(), '{name}.pth')\" and put the file at {dest} "
                "(or point SSAST_PRETRAINED_DIR at the folder that holds it)."
            ) from None
    sd = load_file(dest)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # DeiT's own release wraps the state dict
    if not isinstance(sd, dict) or "patch_embed.proj.weight" not in sd:
        raise CheckpointError(dest, "not a timm ViT/DeiT state dict (no 'patch_embed.proj.weight')")
    return sd, dest


def imagenet_encoder_state(model_size: str, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], tuple[int, int], Path]:
    """Encoder weights from ImageNet DeiT, as AST initialises them.

    The RGB patch projection is summed over its colour channels into one spectrogram channel;
    the square positional grid is returned with its size, for resampling to the model's grid.
    """
    sd, path = imagenet_state_dict(model_size)
    w = sd["patch_embed.proj.weight"]
    if w.shape[0] != cfg.embed_dim:
        raise CheckpointError(path, f"model size mismatch: DeiT width {w.shape[0]}, the model has {cfg.embed_dim}")
    if tuple(w.shape[2:]) != (cfg.fshape, cfg.tshape):
        raise CheckpointError(
            path, f"patch shape mismatch: ImageNet weights have {w.shape[2]}x{w.shape[3]} patches, the model asks "
            f"for fshape={cfg.fshape}, tshape={cfg.tshape}"
        )
    state = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}
    state["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)  # (D, 1, kf, kt)
    n = state["pos_embed"].shape[1] - cfg.num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(path, f"the positional embedding has {n} patch positions, not a square grid")
    return state, (side, side), path


def audioset_file() -> Path:
    """AST's AudioSet model (base384, 16x16 patches, stride 10, 128 x 1024 input, 527 labels)."""
    return registry.fetch(AUDIOSET_RELEASE)
