"""A non-neural baseline for a keyword set: logistic regression on pooled log-mel statistics.

Each clip becomes the mean and standard deviation over time of its 128 Kaldi log-mel bins and
of their first differences (512 numbers, the recipe's fbank, no normalization beyond a
standardization fitted on the training clips); scikit-learn's multinomial logistic regression
is fitted on the training clips with its regularization chosen on the validation clips, and
scored on the test clips. It is the bar a fine-tuned transformer should clear on the same data.

    python benchmarks/logreg_baseline.py --train D/speechcommand_train_data.json \\
        --valid D/speechcommand_valid_data.json --test D/speechcommand_eval_data.json
    python benchmarks/logreg_baseline.py --train DATA/train --valid DATA/valid --test DATA/test --json out.json

Sources are what ``ssast finetune`` reads: a folder per class, a CSV, or a JSON datafile with
its label CSV beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssast.audio import AudioError, load_audio
from ssast.features import fbank
from ssast.sources import SourceError, match_labels, read_source

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def pooled_features(path: str) -> np.ndarray:
    wave = load_audio(path, 16000)
    mel = fbank(wave.reshape(-1), 16000, 128)  # (frames, 128)
    delta = torch.diff(mel, dim=0) if mel.shape[0] > 1 else torch.zeros_like(mel)
    return torch.cat([mel.mean(0), mel.std(0, unbiased=False), delta.mean(0), delta.std(0, unbiased=False)]).numpy()


def load_split(src: str, vocabulary: tuple[list[str], list[str]] | None = None):
    """(features, label indices, vocabulary); clips that cannot be read are skipped and named."""
    source = read_source(src)
    if not source.labeled:
        raise SourceError(src, "has no labels")
    if vocabulary is None:
        vocabulary = (list(source.labels), list(source.display_names or source.labels))
        position = list(range(len(source.labels)))
    else:
        position = match_labels(source, *vocabulary, what="the training data")
    local = source.label_index()
    xs, ys = [], []
    for it in source.items:
        if len(it.labels) != 1:
            raise SourceError(src, f"{it.path}: {len(it.labels)} labels; the baseline is single-label")
        try:
            xs.append(pooled_features(it.path))
        except AudioError as e:
            print(f"skipped {e}", file=sys.stderr)
            continue
        ys.append(position[local[it.labels[0]]])
    return np.stack(xs), np.array(ys), vocabulary


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True, help="picks the regularization strength")
    p.add_argument("--test", required=True)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    x_tr, y_tr, vocab = load_split(args.train)
    x_va, y_va, _ = load_split(args.valid, vocab)
    x_te, y_te, _ = load_split(args.test, vocab)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = (scaler.transform(x) for x in (x_tr, x_va, x_te))
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr) for c in C_GRID}
    valid_acc = {c: float((m.predict(x_va) == y_va).mean()) for c, m in fits.items()}
    best = max(C_GRID, key=lambda c: (valid_acc[c], -c))
    result = {"test_acc": float((fits[best].predict(x_te) == y_te).mean()), "valid_acc": valid_acc[best],
              "C": best, "classes": len(vocab[0]), "clips": {"train": len(y_tr), "valid": len(y_va), "test": len(y_te)},
              "chance": float(np.bincount(y_te).max() / len(y_te)), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"logistic regression on pooled log-mel statistics: test accuracy {result['test_acc']:.4f} "
          f"(valid {result['valid_acc']:.4f}, C={best}; {result['classes']} classes, "
          f"{result['clips']['train']}/{result['clips']['valid']}/{result['clips']['test']} clips; "
          f"majority class {result['chance']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
