"""The default device (a GPU when one is visible, else the CPU), and compiling the encoder."""
from __future__ import annotations

import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device, or cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compile_encoder(model, enabled: bool = True, mode: str | None = None):
    """Compile each Transformer block of the model's encoder in place with ``torch.compile``.

    The blocks share their code and shapes, so one compiled graph serves them all; the rest of the
    model (patch embedding, masking, heads) stays eager. ``mode``: torch.compile's mode (None: its
    default). Returns the model; ``enabled=False`` leaves it as it is.
    """
    if enabled:
        for block in model.v.blocks:
            block.compile(mode=mode)
    return model
