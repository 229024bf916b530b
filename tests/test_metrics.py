"""Metrics against scikit-learn (the recipes' own calls) on random and edge-case data."""
import math
import warnings

import numpy as np
import pytest
import torch

from ssast.metrics import (
    METRIC_KEYS,
    average_precision,
    compute_metrics,
    cumulative_ensemble,
    d_prime,
    decisions,
    roc_auc,
)

skm = pytest.importorskip("sklearn.metrics")
norm = pytest.importorskip("scipy.stats").norm


def data(seed, n=40, c=6, tied=False, p=0.3):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (n, c)) / 4.0 if tied else rng.random((n, c))  # tied: only 5 distinct values
    targets = (rng.random((n, c)) < p).astype(np.float64)
    return scores, targets


def sk_per_class(scores, targets):
    """The AST recipe's loop: sklearn per column, for the columns where each is defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = [skm.average_precision_score(targets[:, k], scores[:, k]) if targets[:, k].any() else np.nan
              for k in range(scores.shape[1])]
        auc = [skm.roc_auc_score(targets[:, k], scores[:, k]) if 0 < targets[:, k].sum() < len(targets) else np.nan
               for k in range(scores.shape[1])]
    return np.array(ap), np.array(auc)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_ap_auc_match_sklearn(seed, tied):
    scores, targets = data(seed, n=int(10 + 13 * seed), tied=tied)
    ap, auc = sk_per_class(scores, targets)
    np.testing.assert_allclose(average_precision(scores, targets).numpy(), ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(roc_auc(scores, targets).numpy(), auc, rtol=0, atol=1e-12)
    m = compute_metrics(scores, targets, multilabel=True)
    assert m["mAP"] == pytest.approx(np.nanmean(ap), abs=1e-12)
    assert m["mAUC"] == pytest.approx(np.nanmean(auc), abs=1e-12)
    assert m["d_prime"] == pytest.approx(norm.ppf(np.nanmean(auc)) * np.sqrt(2.0), abs=1e-9)


def test_ties_between_positive_and_negative():
    # One positive tied with one negative at the top: AP 0.5 at that threshold, then 2/4.
    y = np.array([[1], [0], [1], [0]], dtype=float)
    s = np.array([[0.9], [0.9], [0.2], [0.5]])
    assert average_precision(s, y).item() == pytest.approx(skm.average_precision_score(y[:, 0], s[:, 0]), abs=1e-15)
    assert roc_auc(s, y).item() == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]), abs=1e-15)
    flat = np.full((4, 1), 0.3)  # every score tied: AP is the prevalence, AUC one half
    assert average_precision(flat, y).item() == pytest.approx(0.5)
    assert roc_auc(flat, y).item() == pytest.approx(0.5)


def test_class_without_positives_is_left_out():
    scores, targets = data(1, n=30, c=5)
    targets[:, 2] = 0  # no positive: no AP, no AUC
    targets[:, 4] = 1  # no negative: AP 1, no AUC
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    assert math.isnan(ap[2]) and math.isnan(auc[2]) and math.isnan(auc[4])
    assert ap[4].item() == pytest.approx(1.0)
    m = compute_metrics(scores, targets, multilabel=True)
    assert (m["num_classes_ap"], m["num_classes_auc"]) == (4, 3)
    sk_ap, sk_auc = sk_per_class(scores, targets)
    keep = [0, 1, 3, 4]
    assert m["mAP"] == pytest.approx(np.mean(sk_ap[keep]), abs=1e-12)
    assert m["mAUC"] == pytest.approx(np.mean(sk_auc[[0, 1, 3]]), abs=1e-12)


def test_perfect_and_inverted_scores():
    rng = np.random.default_rng(3)
    targets = (rng.random((25, 4)) < 0.4).astype(float)
    targets[0] = 1
    targets[1] = 0
    perfect = targets * 0.5 + 0.25 + rng.random((25, 4)) * 0.1  # every positive above every negative
    m = compute_metrics(perfect, targets, multilabel=True)
    assert (m["mAP"], m["mAUC"], m["d_prime"]) == (1.0, 1.0, math.inf)
    inv = compute_metrics(-perfect, targets, multilabel=True)
    assert inv["mAUC"] == 0.0 and inv["d_prime"] == -math.inf
    sk_ap, _ = sk_per_class(-perfect, targets)
    assert inv["mAP"] == pytest.approx(sk_ap.mean(), abs=1e-12)


def test_logits_and_probabilities_rank_alike():
    scores, targets = data(4, n=50)
    logits = torch.logit(torch.as_tensor(scores).clamp(1e-6, 1 - 1e-6))
    torch.testing.assert_close(average_precision(logits, targets), average_precision(scores, targets))
    torch.testing.assert_close(roc_auc(logits, targets), roc_auc(scores, targets))


@pytest.mark.parametrize("seed", range(4))
def test_single_label_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 7
    logits = rng.standard_normal((n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, c - 1, n)  # the last class never occurs
    y[:5] = np.argmax(probs[:5], axis=1)  # some hits
    pred = probs.argmax(1)
    m = compute_metrics(probs, y, multilabel=False)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for avg in ("macro", "micro"):
            suffix = "" if avg == "macro" else "_micro"
            assert m["precision" + suffix] == pytest.approx(skm.precision_score(y, pred, average=avg, zero_division=0))
            assert m["recall" + suffix] == pytest.approx(skm.recall_score(y, pred, average=avg, zero_division=0))
            assert m["f1" + suffix] == pytest.approx(skm.f1_score(y, pred, average=avg, zero_division=0))
    assert m["precision_micro"] == pytest.approx(m["acc"])
    onehot = np.eye(c)[y]
    ap, _ = sk_per_class(probs, onehot)
    assert m["mAP"] == pytest.approx(np.nanmean(ap), abs=1e-12)
    assert compute_metrics(probs, onehot, multilabel=False) == m  # indices and one-hot alike
    assert set(m) == set(METRIC_KEYS)


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_multilabel_decisions_against_sklearn(threshold):
    scores, targets = data(7, n=50, c=6)
    targets[:, 5] = 0
    scores[:, 5] = np.minimum(scores[:, 5], 0.2)  # never occurs, never predicted: left out of macro
    pred = (scores >= threshold).astype(int)
    present = np.flatnonzero(targets.any(0) | pred.any(0))
    m = compute_metrics(scores, targets, multilabel=True, threshold=threshold)
    for avg, suffix in (("macro", ""), ("micro", "_micro")):
        kw = dict(average=avg, zero_division=0, labels=present)
        assert m["precision" + suffix] == pytest.approx(skm.precision_score(targets, pred, **kw))
        assert m["recall" + suffix] == pytest.approx(skm.recall_score(targets, pred, **kw))
        assert m["f1" + suffix] == pytest.approx(skm.f1_score(targets, pred, **kw))
    top = scores.argmax(1)
    assert m["acc"] == pytest.approx(np.mean([targets[i, top[i]] for i in range(len(top))]))
    assert decisions(scores, True, threshold).numpy().astype(int).tolist() == pred.tolist()


def test_d_prime_matches_scipy():
    for auc in (0.5, 0.7, 0.9591, 0.99):
        assert d_prime(auc) == pytest.approx(norm.ppf(auc) * math.sqrt(2), rel=1e-12)


def test_cumulative_ensemble():
    rng = np.random.default_rng(5)
    targets = (rng.random((30, 4)) < 0.3).astype(float)
    epochs = [np.clip(targets * 0.3 + rng.random((30, 4)), 0, 1) for _ in range(4)]
    got = cumulative_ensemble(iter(epochs), targets)
    want = [np.nanmean(sk_per_class(np.mean(epochs[:k], axis=0), targets)[0]) for k in range(1, 5)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    acc = cumulative_ensemble(epochs, targets.argmax(1), multilabel=False, metric="acc")
    assert acc[0] == pytest.approx(np.mean(epochs[0].argmax(1) == targets.argmax(1)))


def test_bad_inputs():
    s = np.random.default_rng(0).random((4, 3))
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_metrics(s, np.full((4, 3), 0.5), multilabel=True)
    with pytest.raises(ValueError, match="exactly one class per clip"):
        compute_metrics(s, np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]), multilabel=False)
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.full((4, 3), np.nan), [0, 1, 2, 0], multilabel=False)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        compute_metrics(s, [0, 1, 2, 3], multilabel=False)
    with pytest.raises(ValueError, match="4 clips"):
        compute_metrics(s, [0, 1, 2], multilabel=False)
    with pytest.raises(ValueError, match="unknown metric"):
        cumulative_ensemble([s], [0, 1, 2, 0], metric="top5")
