"""The fine-tuning objective, its evaluator, and the pure pieces of the fine-tuning recipes.

:class:`ClassificationObjective` plugs into :func:`ssast.engine.loop.fit` like the masked-patch
objective: ``train_step`` gives the classification loss (cross-entropy for single-label data,
binary cross-entropy for multi-label data, or as chosen), and its evaluator scores the whole
validation set with :func:`ssast.metrics.compute_metrics` (softmax probabilities for
single-label data, sigmoid for multi-label, as ``ssast evaluate`` does).

Also the recipes' balanced sampling weights and weight averaging (pure functions).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from ..metrics import compute_metrics, probabilities
from .distributed import all_max, all_reduce_sum

LOSSES = ("ce", "bce")


# ----------------------------------------------------------------------------- sampling and averaging

def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-clip sampling weights from label frequencies (the official ``gen_weight_file``).

    ``targets`` (N, C) multi-hot. A label seen ``n`` times weighs ``1000 / (n + 0.01)``; a clip
    weighs the sum of its labels' weights, so clips of rare labels are drawn more often.
    """
    t = targets.to(torch.float64)
    label_weight = 1000.0 / (t.sum(dim=0) + 0.01)  # (C,)
    return t @ label_weight  # (N,)


def average_weights(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts (weight averaging); float32 sums."""
    total, n = None, 0
    for sd in states:
        if total is None:
            total = {k: v.detach().to(torch.float64).clone() for k, v in sd.items()}
        else:
            if set(sd) != set(total):
                raise ValueError(f"state dicts differ in their keys ({sorted(set(sd) ^ set(total))[:5]})")
            for k, v in sd.items():
                total[k] += v.detach().to(torch.float64)
        n += 1
    if total is None:
        raise ValueError("no weights to average")
    return {k: (v / n).to(torch.float32) for k, v in total.items()}


# ----------------------------------------------------------------------------- objective

def classification_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss of (B, C) logits against (B, C) targets (one-hot, multi-hot or mixed by mixup).

    ``ce``: cross-entropy with probability targets (equal to the recipes' class-index
    cross-entropy for one-hot targets; keeps the mixed targets of mixup); ``bce``: binary
    cross-entropy on logits, averaged over clips and classes.
    """
    if loss == "ce":
        return F.cross_entropy(logits, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")


class ClassificationObjective:
    """Supervised fine-tuning: one forward pass through ``task``, the classification loss.

    ``metric`` (``acc`` or ``mAP``, higher is better) picks the best checkpoint. The evaluator
    keeps the last validation's scores (``last_scores``, (N, C) probabilities in the order of
    the validation set) for the checkpoint ensemble.
    """

    mode = "max"

    def __init__(self, task: str, loss: str, multilabel: bool, metric: str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
        if metric not in ("acc", "mAP"):
            raise ValueError(f"metric must be acc or mAP, got {metric!r}")
        self.task, self.loss, self.multilabel, self.metric = task, loss, multilabel, metric
        self.last_scores: torch.Tensor | None = None
        self.last_targets: torch.Tensor | None = None
        self.train_loss = torch.zeros(2, dtype=torch.float64)  # sum of losses, micro-batches

    def to_dict(self) -> dict:
        return {"task": self.task, "loss": self.loss, "multilabel": self.multilabel, "metric": self.metric}

    def train_step(self, model, x, batch, generator):
        logits = model(x, task=self.task).float()  # (B, C)
        target = batch["target"].to(logits.device, torch.float32)  # (B, C), mixed by mixup
        loss = classification_loss(logits, target, self.loss)
        self.train_loss += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
        return loss, {"loss": loss.detach()}

    def take_train_loss(self) -> float:
        """Mean training loss (all ranks) since the last call."""
        total = all_reduce_sum(self.train_loss)
        self.train_loss = torch.zeros(2, dtype=torch.float64)
        return float(total[0] / total[1]) if total[1] > 0 else math.nan

    def evaluator(self) -> "ClassificationEvaluator":
        return ClassificationEvaluator(self)


class ClassificationEvaluator:
    """Scores of every validation clip (all ranks pooled by clip index), then the metrics."""

    def __init__(self, objective: ClassificationObjective):
        self.objective = objective
        self.rows: dict[int, torch.Tensor] = {}
        self.targets: dict[int, torch.Tensor] = {}
        self.loss = torch.zeros(2, dtype=torch.float64)
        self.num_classes: int | None = None
        self.size = 0

    @torch.no_grad()
    def update(self, model, x: torch.Tensor, batch: dict | None) -> None:
        o = self.objective
        logits = model(x, task=o.task).float()  # (B, C)
        if batch is None:  # a rank out of clips runs the pass and counts nothing
            return
        target = batch["target"].to(logits.device, torch.float32)
        self.loss += torch.tensor([float(classification_loss(logits, target, o.loss)) * x.shape[0], x.shape[0]],
                                  dtype=torch.float64)
        scores = probabilities(logits, o.multilabel).cpu()
        for row, idx in enumerate(batch["index"]):
            self.rows[int(idx)] = scores[row]
            self.targets[int(idx)] = target[row].cpu()
        self.num_classes = scores.shape[1]
        self.size = max(self.size, int(batch["size"][0]))

    def compute(self) -> dict[str, float]:
        size, c = all_max(self.size), all_max(self.num_classes or 0)  # a rank without batches knows neither
        scores = torch.zeros(size, c, dtype=torch.float64)
        targets = torch.zeros(size, c, dtype=torch.float64)
        seen = torch.zeros(size, dtype=torch.float64)
        for i, s in self.rows.items():
            scores[i], targets[i], seen[i] = s, self.targets[i], 1.0
        scores, targets, seen = all_reduce_sum(scores), all_reduce_sum(targets), all_reduce_sum(seen)
        loss = all_reduce_sum(self.loss)
        keep = seen > 0
        if not bool(keep.any()):
            raise ValueError("the validation set gave no clips (all unreadable?)")
        seen = seen[keep][:, None]
        scores, targets = scores[keep] / seen, targets[keep] / seen  # (N, C)
        self.objective.last_scores, self.objective.last_targets = scores.float(), targets.float()
        out = compute_metrics(scores, targets, self.objective.multilabel)
        out["loss"] = float(loss[0] / loss[1])
        out["clips"] = int(keep.sum())
        return out
