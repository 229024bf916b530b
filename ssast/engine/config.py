"""Settings of a training run, and the DeepSpeed JSON that holds the engine's own.

The split follows one rule: the DeepSpeed JSON says *how* the engine runs (ZeRO stage, bf16 or
fp16, gradient accumulation, gradient clipping, micro-batch size), never *what* is trained.
The optimizer, the learning-rate schedule and the objective are the project's settings, from
the command line; a JSON with an ``optimizer`` or ``scheduler`` section is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

# DeepSpeed sections that would take the optimizer or the schedule out of the project's hands.
FORBIDDEN_SECTIONS = ("optimizer", "scheduler")

# Default engine settings when no JSON is given: ZeRO stage 2 everywhere, bf16 on GPUs that have it.
DEFAULT_CPU = {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0}
DEFAULT_GPU = {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
               "bf16": {"enabled": True}, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0}


@dataclass
class TrainSettings:
    """Optimizer, schedule and loop settings shared by pretraining and fine-tuning.

    Defaults are the official SSAST pretraining recipe: Adam (lr 1e-4, weight decay 5e-7,
    betas 0.95/0.999), 1000 warm-up steps, the rate halved after ``lr_patience`` validations
    without improvement, validation every 4000 steps.
    """

    max_steps: int
    batch_size: int | None = None  # per-process micro batch; None: the DeepSpeed JSON's, else 24
    lr: float = 1e-4
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 1000
    lr_patience: int = 2
    lr_factor: float = 0.5
    valid_every: int = 4000
    save_every: int = 4000
    keep_last: int = 3
    log_every: int = 50
    seed: int = 0
    num_workers: int = 4
    grad_checkpointing: bool = False

    def validate(self) -> None:
        for name in ("max_steps", "valid_every", "save_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("warmup-steps and num-workers must be >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class DataSettings:
    """Where the clips come from: training sources (mixed by weight) and a validation set."""

    train: list[str]
    weights: list[float] | None = None
    valid: str | None = None
    shuffle_buffer: int = 1000
    valid_batch_size: int | None = None  # None: the training micro batch

    def sources(self):
        """What :func:`ssast.shards.shard_pipeline` takes: one source, or (source, weight) pairs."""
        if len(self.train) == 1 and not self.weights:
            return self.train[0]
        weights = self.weights or [1.0] * len(self.train)
        if len(weights) != len(self.train):
            raise ValueError(f"{len(self.train)} data sources but {len(weights)} weights")
        if any(not w > 0 for w in weights):
            raise ValueError(f"weights must be positive, got {weights}")
        return list(zip(self.train, weights))

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS = ("bf16", "fp16", "fp32")


def load_deepspeed_config(path: str | os.PathLike | None, micro_batch: int | None, device_type: str,
                          requested: str | None = None) -> dict:
    """The DeepSpeed config: the JSON at ``path`` (or the default for the device), with
    ``train_micro_batch_size_per_gpu`` filled from ``micro_batch`` when the file has none.

    ``requested`` (``--precision``): bf16, fp16 or fp32, set in the config's ``bf16``/``fp16``
    sections. Without it, the JSON's; without a JSON, bf16 on a GPU that has it, else fp32.

    Per-step host reads are switched off where DeepSpeed makes them without need (the JSON can
    set them back): bf16's gradient overflow check (bf16 has fp32's range; the loop checks the
    loss at every log line), and, in fp32 without gradient clipping, ZeRO's gradient norm, whose
    validity check reads the norm back at every step (fp32 runs then log no ``grad_norm``).
    fp16's loss scaling and gradient clipping read the norm back at every step by design.

    Raises ValueError naming the file if it cannot be read, holds an optimizer or scheduler
    section, gives a micro-batch size other than ``micro_batch``, or enables bf16 or fp16 when
    another precision is ``requested``.
    """
    if path is None:
        cfg = json.loads(json.dumps(DEFAULT_GPU if device_type == "cuda" else DEFAULT_CPU))
        if device_type == "cuda":
            import torch

            if not torch.cuda.is_bf16_supported():
                cfg.pop("bf16")
        where = "the default DeepSpeed config"
    else:
        where = str(path)
        try:
            cfg = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such DeepSpeed config file") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the DeepSpeed config ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a DeepSpeed config is a JSON object")
    bad = [k for k in FORBIDDEN_SECTIONS if k in cfg]
    if bad:
        raise ValueError(f"{where}: has a {' and a '.join(repr(k) for k in bad)} section; the optimizer and the "
                         "learning-rate schedule come from the command line (--lr, --weight-decay, --betas, "
                         "--warmup-steps, --lr-patience), the JSON holds engine settings only")
    have = cfg.get("train_micro_batch_size_per_gpu")
    if have is not None and micro_batch is not None and int(have) != micro_batch:
        raise ValueError(f"{where}: train_micro_batch_size_per_gpu is {have} but --batch-size is {micro_batch}; "
                         "give one of them")
    if have is None:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch if micro_batch is not None else 24
    if requested is not None:
        _set_precision(cfg, requested, where if path is not None else None)
    if (cfg.get("bf16") or {}).get("enabled"):
        cfg["bf16"].setdefault("check_grad_overflow", False)
    zero = cfg.get("zero_optimization") or {}
    # ZeRO refuses to run without the norm when it offloads the optimizer or runs ZenFlow.
    offload = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    if (precision(cfg) == "fp32" and zero_stage(cfg) in (1, 2) and not offload and "zenflow" not in zero
            and not float(cfg.get("gradient_clipping") or 0.0) > 0):
        zero.setdefault("compute_grad_norm", False)
    # DeepSpeed prints a line every steps_per_print steps; the run's own log covers that.
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def zero_stage(ds_config: dict) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def _set_precision(cfg: dict, want: str, where: str | None) -> None:
    """Set ``want`` in the config's bf16/fp16 sections; a JSON that enables another is refused."""
    if want not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {want!r}")
    have = precision(cfg)
    if where is not None and have not in (want, "fp32"):
        raise ValueError(f"{where}: runs in {have} but --precision is {want}; give one of them")
    for name in ("bf16", "fp16"):
        if name == want:
            cfg[name] = {**(cfg.get(name) or {}), "enabled": True}
        elif (cfg.get(name) or {}).get("enabled"):
            cfg[name]["enabled"] = False


def precision(ds_config: dict) -> str:
    if (ds_config.get("bf16") or {}).get("enabled"):
        return "bf16"
    if (ds_config.get("fp16") or {}).get("enabled"):
        return "fp16"
    return "fp32"

