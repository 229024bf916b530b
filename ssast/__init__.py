"""ssast: self-supervised pretraining and fine-tuning of the Audio Spectrogram Transformer."""
from . import threads  # noqa: F401  (before torch loads: OpenMP's wait policy)
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint, save_released
from .config import ModelConfig
from .loading import Loaded, load
from .model import ASTModel, MaskVisualization

__version__ = "0.1.0"

__all__ = [
    "ASTModel",
    "CheckpointError",
    "Loaded",
    "MaskVisualization",
    "ModelConfig",
    "load",
    "read_checkpoint",
    "save_checkpoint",
    "save_released",
]
