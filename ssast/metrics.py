"""Classification metrics of the AST/SSAST recipes, vectorized over classes.

Inputs: ``scores`` (N, C) and ``targets``, either (N, C) multi-hot 0/1 values or (N,) class
indices. Scores are the model's probabilities: sigmoid for multi-label models, softmax for
single-label ones (the threshold of multi-label precision and recall is a probability). The
ranking metrics (AP, AUC) and the argmax depend only on the order of the scores, so logits give
the same values for them, except where sigmoid saturates and makes distinct logits tie.

Per class, as scikit-learn computes them (the recipes call ``average_precision_score`` and
``roc_auc_score`` column by column):

- **AP**: ``average_precision_score``: the sum over distinct score thresholds, from the highest,
  of (recall gained) x (precision at that threshold); tied scores enter together.
- **AUC**: ``roc_auc_score``: the area under the ROC curve, tied scores counted one half
  (equal to the Mann-Whitney statistic).

``mAP`` and ``mAUC`` are the means over classes. A class with no positive clip has no AP and no
AUC, and a class whose clips are all positive has no AUC: such classes are left out of the means
(scikit-learn would count an AP of 0 for the first and give a NaN AUC, and the recipes' code would
pass both into the mean); ``num_classes_ap`` and ``num_classes_auc`` say how many classes each
mean covers. ``d_prime`` is the recipes' ``sqrt(2) * norm.ppf(mAUC)``.

Decisions: single-label, the argmax of the scores; multi-label, every class whose score is at
least ``threshold``. Precision, recall and F1 are given macro-averaged (the mean over classes of
the per-class values) and micro-averaged (from the counts summed over classes), as scikit-learn's
``precision_score`` etc. with ``zero_division=0`` and ``labels`` = the classes that occur in the
targets or in the decisions (scikit-learn's own default for single-label data); a class that
neither occurs nor is predicted has no precision or recall and is left out. Single-label, the
micro averages all equal the accuracy.

``acc``: single-label, the fraction of clips whose argmax is the true class; multi-label, the
fraction whose highest-scoring class is one of the clip's labels (top-1 hit rate).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Scores of (B, C) logits, in float32: sigmoid for multi-label models, softmax otherwise."""
    logits = logits.float()
    return logits.sigmoid() if multilabel else logits.softmax(dim=-1)

METRIC_KEYS = ("acc", "mAP", "mAUC", "d_prime", "precision", "recall", "f1", "precision_micro",
               "recall_micro", "f1_micro", "num_clips", "num_classes_ap", "num_classes_auc")


def _scores(scores) -> torch.Tensor:
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    s = s.detach().cpu().to(torch.float64)
    if s.dim() != 2:
        raise ValueError(f"scores must be (clips, classes), got shape {tuple(s.shape)}")
    if s.shape[0] == 0:
        raise ValueError("no clips: scores has 0 rows")
    if torch.isnan(s).any():
        raise ValueError(f"scores contain NaN (in {int(torch.isnan(s).any(dim=1).sum())} clips)")
    return s


def as_multi_hot(targets, num_classes: int, num_clips: int | None = None) -> torch.Tensor:
    """(N,) class indices or (N, C) 0/1 values -> (N, C) float64 0/1."""
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets).detach().cpu()
    if num_clips is not None and (t.dim() == 0 or t.shape[0] != num_clips):
        raise ValueError(f"targets have shape {tuple(t.shape)}, the scores {num_clips} clips")
    if t.dim() == 1:
        if t.is_floating_point() and not (t == t.round()).all():
            raise ValueError("1-D targets must be class indices (integers)")
        t = t.long()
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"class indices must lie in [0, {num_classes}), got {int(t.min())}..{int(t.max())}")
        return torch.nn.functional.one_hot(t, num_classes).to(torch.float64)
    if t.dim() != 2 or t.shape[1] != num_classes:
        raise ValueError(f"targets must be (clips,) class indices or (clips, {num_classes}) multi-hot, "
                         f"got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not ((t == 0) | (t == 1)).all():
        raise ValueError("multi-hot targets must hold only 0 and 1 (soft labels have no AP or AUC)")
    return t


def _ranked(scores: torch.Tensor, targets: torch.Tensor):
    """Per class, clips sorted by decreasing score: (labels, group start, group end) (N, C).

    A group is a run of tied scores; start/end are the positions of its first and last clip.
    """
    n = scores.shape[0]
    s, order = scores.sort(dim=0, descending=True, stable=True)  # (N, C)
    y = targets.gather(0, order)  # (N, C)
    pos = torch.arange(n)[:, None].expand_as(s)  # (N, C)
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]  # first clip of a group of ties
    last = torch.ones_like(new)
    last[:-1] = new[1:]  # last clip of a group
    start = torch.where(new, pos, 0).cummax(dim=0).values  # (N, C)
    end = torch.where(last, pos, n).flip(0).cummin(dim=0).values.flip(0)  # (N, C)
    return y, start, end


def average_precision(scores, targets) -> torch.Tensor:
    """Per-class AP (C,) as scikit-learn's ``average_precision_score``; NaN for a class with no positive."""
    s = _scores(scores)
    t = as_multi_hot(targets, s.shape[1], s.shape[0])
    y, _, end = _ranked(s, t)
    hits = y.cumsum(dim=0)  # (N, C) positives among the top i+1
    precision = hits / torch.arange(1, s.shape[0] + 1, dtype=torch.float64)[:, None]
    # Every positive adds 1/P recall at the threshold of its tie group, where the precision is
    # that of the whole group.
    at_threshold = precision.gather(0, end)  # (N, C)
    num_pos = y.sum(dim=0)  # (C,)
    ap = (y * at_threshold).sum(dim=0) / num_pos
    return torch.where(num_pos > 0, ap, torch.nan)


def roc_auc(scores, targets) -> torch.Tensor:
    """Per-class ROC AUC (C,) as scikit-learn's ``roc_auc_score``; NaN for a class with one kind of clip."""
    s = _scores(scores)
    t = as_multi_hot(targets, s.shape[1], s.shape[0])
    y, start, end = _ranked(s, t)
    neg = 1 - y
    neg_upto = neg.cumsum(dim=0)  # (N, C) negatives at positions <= i
    neg_before = neg_upto - neg  # negatives at positions < i
    num_pos, num_neg = y.sum(dim=0), neg.sum(dim=0)  # (C,)
    # A positive beats every negative ranked below its tie group and half of those tied with it.
    below = num_neg - neg_upto.gather(0, end)
    tied = neg_upto.gather(0, end) - neg_before.gather(0, start)
    auc = (y * (below + 0.5 * tied)).sum(dim=0) / (num_pos * num_neg)
    return torch.where((num_pos > 0) & (num_neg > 0), auc, torch.nan)


def d_prime(auc: float) -> float:
    """Sensitivity index of an AUC: ``sqrt(2) * Phi^-1(auc)`` (inf at 1, -inf at 0)."""
    if math.isnan(auc):
        return math.nan
    return math.sqrt(2.0) * float(torch.special.ndtri(torch.tensor(float(auc), dtype=torch.float64)))


def decisions(scores, multilabel: bool, threshold: float = 0.5) -> torch.Tensor:
    """(N, C) bool: the argmax class (single-label) or every class scoring >= threshold (multi-label)."""
    s = _scores(scores)
    if multilabel:
        return s >= threshold
    return torch.nn.functional.one_hot(s.argmax(dim=1), s.shape[1]).bool()


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1), 0.0)  # zero_division=0


def precision_recall(pred: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Macro and micro precision, recall and F1 of (N, C) 0/1 decisions against (N, C) 0/1 targets."""
    pred, true = pred.to(torch.float64), targets.to(torch.float64)
    tp = (pred * true).sum(dim=0)  # (C,)
    n_pred, n_true = pred.sum(dim=0), true.sum(dim=0)  # (C,)
    used = (n_pred > 0) | (n_true > 0)  # classes that occur or are predicted
    prec, rec, f1 = _div(tp, n_pred), _div(tp, n_true), _div(2 * tp, n_pred + n_true)
    k = int(used.sum())

    def macro(v: torch.Tensor) -> float:
        return float(v[used].sum() / k) if k else 0.0

    return {
        "precision": macro(prec), "recall": macro(rec), "f1": macro(f1),
        "precision_micro": float(_div(tp.sum(), n_pred.sum())),
        "recall_micro": float(_div(tp.sum(), n_true.sum())),
        "f1_micro": float(_div(2 * tp.sum(), n_pred.sum() + n_true.sum())),
    }


def _nanmean(v: torch.Tensor) -> tuple[float, int]:
    ok = ~torch.isnan(v)
    k = int(ok.sum())
    return (float(v[ok].mean()) if k else math.nan), k


def compute_metrics(scores, targets, multilabel: bool, *, threshold: float = 0.5) -> dict[str, float]:
    """All metrics of the module docstring, as a flat dict with the keys of :data:`METRIC_KEYS`.

    ``scores``: (N, C) probabilities; ``targets``: (N, C) multi-hot or (N,) class indices.
    Single-label (``multilabel=False``) targets must have exactly one positive class per clip.
    """
    s = _scores(scores)
    t = as_multi_hot(targets, s.shape[1], s.shape[0])
    n = s.shape[0]
    top = s.argmax(dim=1)  # (N,)
    if multilabel:
        acc = float(t[torch.arange(n), top].mean())
    else:
        per_clip = t.sum(dim=1)
        bad = int((per_clip != 1).sum())
        if bad:
            raise ValueError(f"single-label metrics need exactly one class per clip; {bad} of {n} clips have "
                             f"{'none' if (per_clip == 0).any() else 'several'} (use multilabel=True)")
        acc = float((top == t.argmax(dim=1)).to(torch.float64).mean())
    m_ap, k_ap = _nanmean(average_precision(s, t))
    m_auc, k_auc = _nanmean(roc_auc(s, t))
    out = {"acc": acc, "mAP": m_ap, "mAUC": m_auc, "d_prime": d_prime(m_auc)}
    out.update(precision_recall(decisions(s, multilabel, threshold), t))
    out.update(num_clips=n, num_classes_ap=k_ap, num_classes_auc=k_auc)
    return out


def cumulative_ensemble(predictions_per_epoch: Iterable, targets, *, multilabel: bool = True,
                        metric: str = "mAP", threshold: float = 0.5) -> list[float]:
    """The AST recipe's checkpoint ensemble: entry k-1 is ``metric`` of the mean of the
    predictions of epochs 1..k.

    ``predictions_per_epoch``: one (N, C) array of probabilities per epoch, in epoch order
    (consumed one at a time, so a generator reading saved files works). ``metric``: any key of
    :func:`compute_metrics` (the recipe reports ``mAP``).
    """
    if metric not in METRIC_KEYS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRIC_KEYS)}")
    total, out = None, []
    for k, pred in enumerate(predictions_per_epoch, start=1):
        p = _scores(pred)
        if total is not None and p.shape != total.shape:
            raise ValueError(f"predictions of epoch {k} have shape {tuple(p.shape)}, those of epoch 1 {tuple(total.shape)}")
        total = p if total is None else total + p
        out.append(compute_metrics(total / k, targets, multilabel, threshold=threshold)[metric])
    if not out:
        raise ValueError("no predictions given")
    return out
