"""Learning-rate schedules: the rate of every update is a function of its step.

The loop takes any function ``step -> rate``. Fine-tuning's (:func:`finetune_lr`) is pure:
the official per-epoch step decay, or a cosine, after an optional warm-up. Pretraining's
(:class:`PlateauSchedule`) also depends on the validations so far, through a :class:`Plateau`
that is plain data saved in checkpoints.

The official SSAST recipe ramps the learning rate up linearly over the first 1000 steps, then
keeps it until the validation masked-patch accuracy stops improving, when it is halved
(``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max", factor=0.5, patience=2)`` with the
default relative threshold of 1e-4), checked every 4000 steps. The 2021 code moved the warm-up
rate in stairs every 50 steps, starting at 0; here it rises every step, from ``lr / warmup``.

Nothing here touches an optimizer: the loop writes the rate into its parameter groups before
each step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

SCHEDULES = ("step", "cosine")


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


class PlateauSchedule:
    """Pretraining's rate: warm-up, then ``lr`` times the plateau's scale (see the module docstring).

    :meth:`observe` takes each validation's metric and says whether the rate was reduced.
    """

    def __init__(self, lr: float, warmup_steps: int, plateau: Plateau):
        self.lr, self.warmup_steps, self.plateau = lr, warmup_steps, plateau

    def __call__(self, step: int) -> float:
        return learning_rate(step, self.lr, self.warmup_steps, self.plateau.scale)

    def observe(self, value: float) -> bool:
        before = self.plateau.reductions
        self.plateau = self.plateau.update(value)
        return self.plateau.reductions > before


# ----------------------------------------------------------------------------- fine-tuning

def step_decay_factor(epoch: int, start: int, step: int, decay: float) -> float:
    """The official step schedule's factor for epoch ``epoch`` (counted from 0).

    The recipes build ``MultiStepLR(milestones=range(start, 1000, step), gamma=decay)`` and step
    it after every epoch, so epoch ``e`` (from 0) runs at ``decay ** #{m in milestones: m <= e}``:
    the first ``start`` epochs at the full rate, then one more factor every ``step`` epochs.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if step < 1:
        raise ValueError(f"lr-scheduler-step must be >= 1, got {step}")
    if epoch < start:
        return 1.0
    return decay ** ((epoch - start) // step + 1)


def cosine_factor(step: int, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> float:
    """Cosine decay from 1 to ``final`` over the steps after the warm-up (steps from 0)."""
    if total_steps <= warmup_steps:
        return 1.0
    t = min(max(step - warmup_steps, 0) / (total_steps - warmup_steps), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def finetune_lr(step: int, *, lr: float, steps_per_epoch: int, total_steps: int, schedule: str = "step",
                warmup_steps: int = 0, start: int = 5, step_size: int = 1, decay: float = 0.85) -> float:
    """Rate of the update that takes the model from ``step`` to ``step + 1``.

    ``step``: the official per-epoch step decay (:func:`step_decay_factor`); ``cosine``: per-step
    cosine decay to 0 (:func:`cosine_factor`). A warm-up multiplies the first ``warmup_steps``
    updates by ``(step + 1) / warmup_steps`` (the official recipes ramp over 1000 iterations).
    """
    if schedule == "step":
        factor = step_decay_factor(step // steps_per_epoch, start, step_size, decay)
    elif schedule == "cosine":
        factor = cosine_factor(step, total_steps, warmup_steps)
    else:
        raise ValueError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return lr * factor
