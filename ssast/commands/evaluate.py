"""``ssast evaluate MODEL [MODEL ...] --data SRC``: metrics of a model or an ensemble.

See :mod:`ssast.evaluate` for how clips are read, labels matched and ensembles formed, and
:mod:`ssast.metrics` for the metrics.
"""
from __future__ import annotations

import argparse
import sys

from .. import options
from ..evaluate import TASKS, evaluate, format_results, to_json
from ..files import atomic_write, json_text
from ..loading import load


def run(args) -> int:
    models = [load(m, **options.load_options(args)) for m in args.models]
    for m in models:
        options.report_assumed(m, "evaluate")
    result = evaluate(models, args.data, label_csv=args.label_csv, batch_size=args.batch_size, device=args.device,
                      task=args.task, multilabel=args.multilabel, threshold=args.threshold,
                      num_workers=args.num_workers, progress=args.progress)
    for s in result["skipped"]:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    print(format_results(result))
    if args.json:
        atomic_write(args.json, json_text(to_json(result), indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="metrics of a fine-tuned model, or of an ensemble of several, on a labelled dataset",
        description="Run fine-tuned model(s) over a labelled dataset (a folder per class, a CSV with a label "
                    "column, or a JSON datafile with its label CSV) and print accuracy, mAP, mean AUC, d-prime, "
                    "precision and recall. With several models, also the metrics of their ensemble (the mean of "
                    "their probabilities). Labels are matched to the model's by name.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="fine-tuned model(s): checkpoints (project or released format), fine-tuning run folders, "
                        "or Hugging Face model folders")
    p.add_argument("--data", required=True, help="labelled data: folder per class, CSV, or JSON datafile")
    options.add_label_csv(p, "label CSV of a JSON datafile or CSV (default: class_labels_indices.csv beside it)")
    p.add_argument("--json", help="also write the results (all metrics, per model) to this JSON file")
    p.add_argument("--task", choices=TASKS, help="pooling of the encoder outputs (default: each model's own)")
    p.add_argument("--multilabel", action=argparse.BooleanOptionalAction, default=None,
                   help="sigmoid scores and multi-label metrics, or softmax and single-label ones (default: what "
                        "the model records, else multi-label when some clip has several labels or none)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="score at which a class counts as predicted, for multi-label precision and recall (default: 0.5)")
    options.add_model_options(p)
    r = p.add_argument_group("running")
    options.add_loading(r, 16)
    options.add_running(r)
    p.set_defaults(func=run)
