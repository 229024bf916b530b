"""``ssast evaluate CHECKPOINT [CHECKPOINT ...] --data SRC``: metrics of a model or an ensemble.

See :mod:`ssast.evaluate` for how clips are read, labels matched and ensembles formed, and
:mod:`ssast.metrics` for the metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run(args) -> int:
    from ..evaluate import evaluate, format_results, to_json

    geometry = {k: getattr(args, k) for k in ("fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim")}
    result = evaluate(args.checkpoints, args.data, label_csv=args.label_csv, batch_size=args.batch_size,
                      device=args.device, task=args.task, multilabel=args.multilabel, threshold=args.threshold,
                      num_workers=args.num_workers, geometry={k: v for k, v in geometry.items() if v is not None},
                      progress=not args.quiet)
    for s in result["skipped"]:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    print(format_results(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="metrics of a fine-tuned model, or of an ensemble of several, on a labelled dataset",
        description="Run fine-tuned model(s) over a labelled dataset (a folder per class, a CSV with a label "
                    "column, or a JSON datafile with its label CSV) and print accuracy, mAP, mean AUC, d-prime, "
                    "precision and recall. With several checkpoints, also the metrics of their ensemble (the "
                    "mean of their probabilities). Labels are matched to the model's by name.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="fine-tuned model(s): project checkpoints or released AST/SSAST files")
    p.add_argument("--data", required=True, help="labelled data: folder per class, CSV, or JSON datafile")
    p.add_argument("--label-csv", help="label CSV (index,mid,display_name) of a JSON datafile or CSV "
                                       "(default: class_labels_indices.csv beside a datafile)")
    p.add_argument("--json", help="also write the results (all metrics, per model) to this JSON file")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch (default: 16)")
    p.add_argument("--device", help="device (default: cuda when available, else cpu)")
    p.add_argument("--task", choices=("ft_avgtok", "ft_cls"),
                   help="pooling of the encoder outputs (default: each checkpoint's own)")
    p.add_argument("--multilabel", action=argparse.BooleanOptionalAction, default=None,
                   help="sigmoid scores and multi-label metrics, or softmax and single-label ones (default: from "
                        "the checkpoint's meta, else multi-label when some clip has several labels or none)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="score at which a class counts as predicted, for multi-label precision and recall (default: 0.5)")
    p.add_argument("--num-workers", type=int, default=0, help="data loading processes (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    geo = p.add_argument_group("geometry of released fine-tuned files (not stored in them)")
    for name in ("fshape", "tshape", "fstride", "tstride", "input-fdim", "input-tdim"):
        geo.add_argument(f"--{name}", type=int)
    p.set_defaults(func=run)
