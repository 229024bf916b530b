"""``ssast info SOURCE`` and ``ssast export SOURCE --format ... --out ...``.

Both take anything :func:`ssast.load` takes: a checkpoint file (project or released format), a
pretraining or fine-tuning run folder, or a Hugging Face model folder.
"""
from __future__ import annotations

from .. import onnx, options
from ..checkpoint import save_checkpoint, save_released
from ..hf import export_hf
from ..loading import describe, load
from ..model import FINETUNE_TASKS

FORMATS = ("released", "ssast", "hf", "onnx")


def run_info(args) -> int:
    print(describe(load(args.source, **options.load_options(args))))
    return 0


def run_export(args) -> int:
    loaded = load(args.source, **options.load_options(args))
    options.report_assumed(loaded, "export")
    if args.format == "hf":
        export_hf(loaded, args.out)
    elif args.format == "onnx":
        onnx.export_onnx(loaded, args.out, with_features=args.with_features, task=args.task, opset=args.opset)
    elif args.format == "released":
        save_released(loaded.model, args.out)
    else:
        meta = {**loaded.meta, "label_ids": loaded.label_ids} if loaded.label_ids else loaded.meta
        if loaded.multilabel is not None:
            meta = {**meta, "multilabel": loaded.multilabel}
        save_checkpoint(loaded.model, args.out, features=loaded.features.to_dict(), labels=loaded.labels, meta=meta)
    print(f"wrote {args.out} ({args.format} format)")
    return 0


SOURCE_HELP = ("a checkpoint file (project or released format), a run folder (ssast pretrain or finetune --out), "
               "or a Hugging Face model folder")


def register(subparsers) -> None:
    i = subparsers.add_parser("info", help="describe a model: checkpoint, run folder or Hugging Face folder")
    i.add_argument("source", help=SOURCE_HELP)
    options.add_model_options(i, "the file")
    i.set_defaults(func=run_info)

    e = subparsers.add_parser("export", help="write a model in the released 2021 format, the project format, "
                              "or as a Hugging Face transformers model folder")
    e.add_argument("source", help=SOURCE_HELP + "; a pretraining run gives its newest complete checkpoint")
    e.add_argument("--format", choices=FORMATS, required=True,
                   help="released: the 2021 code's and s3prl's format; ssast: the project format (model config, "
                        "features and labels inside); hf: transformers' ASTForAudioClassification (fine-tuned "
                        "ft_cls models with 16x16 patches); onnx: for ONNX Runtime (fine-tuned models)")
    e.add_argument("--out", required=True, help="output file (a folder for --format hf)")
    g = e.add_argument_group("onnx")
    g.add_argument("--with-features", action=options.B, default=False,
                   help="16 kHz waveform in (batch, samples), the Kaldi fbank inside the graph; default: the "
                        "normalized spectrogram (batch, frames, mel bins) in")
    g.add_argument("--task", choices=FINETUNE_TASKS, help="pooling (default: the model's own)")
    g.add_argument("--opset", type=int, default=onnx.DEFAULT_OPSET, help=f"ONNX opset (default {onnx.DEFAULT_OPSET})")
    options.add_model_options(e, "the file")
    e.set_defaults(func=run_export)
