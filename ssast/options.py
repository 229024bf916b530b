"""The command line's vocabulary: every option shared by several subcommands, declared once.

One concept has one flag in every subcommand (the table in the README): the model a command
reads and how to run it (``--fstride``, ``--tstride``, ``--target-length``, ``--preset``,
``--mean``, ``--std``), the model a training run builds (``--model-size``, ``--model-config``,
``--fshape``, ``--tshape``), the features (``--sample-rate``, ``--num-mel-bins``), data
loading (``--batch-size``, ``--num-workers``, ``--label-csv``), and the engine (``--device``,
``--deepspeed-config``, ``--progress``). Subcommands add the groups they take with the
functions here and read them back with :func:`load_options` and :func:`model_config`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import presets
from .config import SIZES, ModelConfig
from .engine.config import PRECISIONS

B = argparse.BooleanOptionalAction
SIZE_CHOICES = tuple(SIZES)
# ModelConfig fields a --model-config file may set: the encoder's size, never its geometry.
ENCODER_FIELDS = ("embed_dim", "depth", "num_heads", "num_prefix_tokens", "mlp_ratio", "norm_eps", "model_size")


def add_model_options(p: argparse.ArgumentParser, what: str = "the model") -> None:
    """How to read and run a model: strides and input length (released fine-tuned files store
    neither), and the normalization (released fine-tuned files do not store it)."""
    g = p.add_argument_group(
        "model options", f"override what {what} says, or what was assumed for a released file that does not say it")
    g.add_argument("--fstride", type=int, help="frequency stride (released fine-tuned files: the one it was trained with)")
    g.add_argument("--tstride", type=int, help="time stride")
    g.add_argument("--target-length", type=int, metavar="FRAMES", help="frames per input (the model's input_tdim)")
    add_normalization(p, g)


def add_normalization(p: argparse.ArgumentParser, group=None) -> None:
    g = group or p.add_argument_group("features")
    g.add_argument("--preset", choices=tuple(presets.PRESETS),
                   help="an official recipe's normalization and input length (and augmentation, for fine-tuning)")
    g.add_argument("--mean", type=float, help="normalization mean of the log-mel features")
    g.add_argument("--std", type=float, help="normalization std of the log-mel features")


def load_options(a: argparse.Namespace) -> dict:
    """The :func:`ssast.load` keyword arguments given on the command line."""
    keys = ("fstride", "tstride", "target_length", "num_mel_bins", "preset", "mean", "std")
    return {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}


OVERRIDE_HINT = "give --fstride/--tstride, --target-length, --preset or --mean/--std if it was trained otherwise"


def report_assumed(loaded, command: str) -> None:
    """Say once what the loader filled in for a file that does not store it."""
    if loaded.assumed:
        print(f"ssast {command}: {loaded.source} does not store its full setup: assumed {'; '.join(loaded.assumed)} "
              f"({OVERRIDE_HINT})", file=sys.stderr)


def add_label_csv(p, help: str) -> None:
    p.add_argument("--label-csv", metavar="CSV", help=help + " (the official index,mid,display_name format)")


def add_loading(p, batch_size: int, what: str = "clips", workers: int | None = 0) -> None:
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"{what} per batch (default {batch_size})")
    if workers is not None:
        p.add_argument("--num-workers", type=int, default=workers,
                       help=f"data loading processes (default {workers})")


def add_running(p, *, progress: bool = True) -> None:
    p.add_argument("--device", help="device (default: cuda when a GPU is visible, else cpu)")
    if progress:
        add_progress(p)


def add_progress(p) -> None:
    p.add_argument("--progress", action=B, default=True, help="progress bar (default: on)")


def add_architecture(p, *, strides: bool, default_shape: int | None) -> None:
    """The model a training run builds: size, patch shape (and fine-tuning strides)."""
    g = p.add_argument_group("model")
    g.add_argument("--model-size", default="base", choices=SIZE_CHOICES, help="default base")
    g.add_argument("--model-config", metavar="JSON",
                   help="a custom encoder size instead of --model-size: ModelConfig fields "
                        f"({', '.join(ENCODER_FIELDS[:-1])})")
    shape = "" if default_shape is None else f" (default {default_shape})"
    g.add_argument("--fshape", type=int, default=default_shape,
                   help=f"patch height in mel bins{shape}: 16 patch model, 128 frame model")
    g.add_argument("--tshape", type=int, default=default_shape,
                   help=f"patch width in frames{shape}: 16 patch model, 2 frame model")
    if strides:
        g.add_argument("--fstride", type=int, default=10, help="default 10 (frame models: 128)")
        g.add_argument("--tstride", type=int, default=10, help="default 10 (frame models: 1)")


def add_features(p, *, target_length: int | None, stats: str) -> None:
    g = p.add_argument_group("features")
    g.add_argument("--sample-rate", type=int, default=16000, help="default 16000")
    g.add_argument("--num-mel-bins", type=int, default=128, help="default 128")
    default = f"default {target_length}" if target_length is not None else "default: the preset's, else 1024"
    g.add_argument("--target-length", type=int, default=target_length, metavar="FRAMES",
                   help=f"frames per clip, the model's input_tdim ({default})")
    add_normalization(p, g)
    g.description = stats


def add_engine(p) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--deepspeed-config", metavar="JSON",
                   help="DeepSpeed engine settings: ZeRO stage, bf16/fp16, gradient accumulation and clipping "
                        "(default: ZeRO 2, bf16 on GPUs that have it, fp32 on CPU); see pretrain/*.json")
    g.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="training precision (default: the --deepspeed-config JSON's; without one, bf16 on a GPU "
                        "that has it, fp32 on CPU); sets the JSON's bf16/fp16 sections")
    g.add_argument("--compile", action=B, default=False,
                   help="compile the encoder's Transformer blocks with torch.compile (ssast.device.compile_encoder), "
                        "after a compilation of a minute or so at the start; meant for GPUs (no gain measured on "
                        "CPUs: see the README's Speed section) (default: off)")
    add_progress(g)


def read_model_config(path: str | None) -> dict | None:
    """The encoder size fields of a ``--model-config`` JSON file (geometry comes from the flags)."""
    if path is None:
        return None
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model config file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the model config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a model config is a JSON object of ModelConfig fields")
    other = sorted(set(d) - set(ENCODER_FIELDS))
    if other:
        raise ValueError(f"{path}: sets {', '.join(other)}; a model config gives the encoder's size "
                         f"({', '.join(ENCODER_FIELDS)}); patch shape, strides and input size come from the flags")
    return d


def model_config(a: argparse.Namespace, **geometry) -> ModelConfig:
    """The model a training command builds: ``--model-size`` or ``--model-config``, with ``geometry``."""
    size = read_model_config(a.model_config)
    try:
        if size is None:
            return ModelConfig.from_size(a.model_size, **geometry)
        return ModelConfig.from_dict({"model_size": "custom", **size, **geometry})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{a.model_config or a.model_size}: {e}") from None
