"""Seeds derived from a run seed and names or counters: one rule for every random stream.

A stream (a micro-batch's masks, a clip's crop, an epoch's order, a validation clip's mask) is
seeded by :func:`derive_seed` of the run seed and what identifies the stream. The seed depends
only on those parts, the same on every machine and process, so a resumed or re-sharded run draws
what an uninterrupted one draws.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (ints and strings): SHA-256 of their ``/``-joined text."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def rng(*parts: int | str) -> random.Random:
    """A Python ``random.Random`` seeded with :func:`derive_seed` of ``parts``."""
    return random.Random(derive_seed(*parts))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation, workers)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
