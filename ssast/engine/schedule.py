"""The learning-rate schedule: a pure function of the step, and the plateau state that halves it.

The official SSAST recipe ramps the learning rate up linearly over the first 1000 steps, then
keeps it until the validation masked-patch accuracy stops improving, when it is halved
(``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max", factor=0.5, patience=2)`` with the
default relative threshold of 1e-4), checked every 4000 steps. The 2021 code moved the warm-up
rate in stairs every 50 steps, starting at 0; here it rises every step, from ``lr / warmup``.

Nothing here touches an optimizer: the loop writes :func:`learning_rate` into its parameter
groups before each step, and a :class:`Plateau` is plain data saved in checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace


def learning_rate(step: int, base_lr: float, warmup_steps: int, scale: float = 1.0) -> float:
    """Rate of the optimizer update that takes the model from ``step`` to ``step + 1`` (steps from 0).

    ``base_lr * scale`` after the warm-up; during it, ``(step + 1) / warmup_steps`` of that, so
    the first update already moves and update ``warmup_steps`` reaches the full rate.
    ``scale`` is the plateau factor (:attr:`Plateau.scale`).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * scale * (step + 1) / warmup_steps
    return base_lr * scale


@dataclass(frozen=True)
class Plateau:
    """Halve the rate when a validation metric stops improving (ReduceLROnPlateau semantics).

    After each validation, :meth:`update` counts the validations since the best one; when
    that count exceeds ``patience`` the scale is multiplied by ``factor`` and the count restarts.
    A value improves on the best when it beats ``best * (1 + threshold)`` in ``max`` mode or
    ``best * (1 - threshold)`` in ``min`` mode, as PyTorch's relative threshold does.
    """

    mode: str = "max"
    patience: int = 2
    factor: float = 0.5
    threshold: float = 1e-4
    min_scale: float = 0.0
    best: float | None = None
    bad: int = 0  # validations since the best one
    scale: float = 1.0  # product of the reductions so far
    reductions: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than the threshold."""
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "max":
            return value > self.best * (1 + self.threshold)
        return value < self.best * (1 - self.threshold)

    def update(self, value: float) -> "Plateau":
        """The state after one validation that gave ``value``."""
        if self.improves(value):
            return replace(self, best=float(value), bad=0)
        bad = self.bad + 1
        if bad > self.patience:
            return replace(self, bad=0, scale=max(self.scale * self.factor, self.min_scale),
                           reductions=self.reductions + 1)
        return replace(self, bad=bad)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plateau":
        return cls(**d)
