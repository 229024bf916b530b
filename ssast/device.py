"""The training device: the default one (a GPU when one is visible, else the CPU), and the
compiled encoder for it."""
from __future__ import annotations

import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device, or cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ASTEncoder of an ASTModel, of a wrapper holding one as ``module`` (a DeepSpeed
    engine), or the encoder itself."""
    from .encoder import ASTEncoder

    seen = model
    for _ in range(3):
        if isinstance(seen, ASTEncoder):
            return seen
        if isinstance(getattr(seen, "v", None), ASTEncoder):
            return seen.v
        seen = getattr(seen, "module", None)
        if seen is None:
            break
    raise TypeError(f"compile_encoder takes an ASTModel, its encoder or a wrapper of one (a DeepSpeed engine), "
                    f"got {type(model).__name__}")


def compile_encoder(model: torch.nn.Module, enabled: bool = True, mode: str | None = None) -> torch.nn.Module:
    """Compile the encoder's Transformer blocks with ``torch.compile``, in place; returns ``model``.

    Each block is compiled on its own (``nn.Module.compile``): the blocks share one graph, so
    compilation costs one block's forward and backward whatever the depth, and what the blocks
    do not contain (masking, with its data-dependent indexing, the heads, the objectives) runs
    eagerly. The modules stay where they were, so state-dict keys are unchanged (no
    ``_orig_mod.``), and activation checkpointing (``set_grad_checkpointing``) recomputes the
    compiled blocks. ``mode``: torch.compile's (``None``, ``"max-autotune"``, ...).
    ``enabled=False`` returns the model untouched.
    """
    if not enabled:
        return model
    for block in _encoder(model).blocks:
        block.compile(mode=mode, dynamic=False)
    return model
