"""ssast: self-supervised pretraining and fine-tuning of the Audio Spectrogram Transformer."""
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint, save_released
from .config import ModelConfig
from .model import ASTModel, MaskVisualization, load_finetuned, load_model

__version__ = "0.1.0"

__all__ = [
    "ASTModel",
    "CheckpointError",
    "MaskVisualization",
    "ModelConfig",
    "load_finetuned",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "save_released",
]
