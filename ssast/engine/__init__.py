"""The training engine: DeepSpeed, a flat loop, a pure schedule, resumable checkpoints, logs.

Roles by file: :mod:`.config` (run settings and the DeepSpeed JSON), :mod:`.schedule`
(learning rate), :mod:`.objective` (what a step computes; pluggable), :mod:`.data` (resumable
training stream, validation set, features), :mod:`.loop` (the loop), :mod:`.checkpointing`
(DeepSpeed checkpoints and exports), :mod:`.logging` (TensorBoard, progress bar, text log),
:mod:`.distributed` (process group), :mod:`.pretrain` (the pretraining run).
DeepSpeed is imported only when a run starts.
"""
from .checkpointing import export_source
from .config import DataSettings, TrainSettings, load_deepspeed_config
from .loop import TrainState, fit
from .objective import MaskedPatchObjective
from .pretrain import PretrainConfig, pretrain
from .schedule import Plateau, learning_rate

__all__ = [
    "DataSettings",
    "MaskedPatchObjective",
    "Plateau",
    "PretrainConfig",
    "TrainSettings",
    "TrainState",
    "export_source",
    "fit",
    "learning_rate",
    "load_deepspeed_config",
    "pretrain",
]
