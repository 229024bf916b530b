import json
import os
from pathlib import Path

import pytest
import torch

from ssast import ASTModel, ModelConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SSAST_FIXTURES", REPO.parent / "shared" / "fixtures"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The reference fixtures made by the official 2021 code (../shared/fixtures)."""
    if not (FIXTURES / "index.json").exists():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SSAST_FIXTURES to their folder)")
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_index(fixtures) -> dict:
    return json.loads((fixtures / "index.json").read_text())


def load_pt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def tiny_config(**kw) -> ModelConfig:
    """A few-block, narrow model on a small spectrogram, for fast shape and gradient tests."""
    base = dict(embed_dim=32, depth=2, num_heads=2, num_prefix_tokens=2, fshape=4, tshape=4,
                fstride=4, tstride=4, input_fdim=16, input_tdim=32, label_dim=5, model_size="custom",
                stage="pretrain")
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(**kw) -> ASTModel:
    torch.manual_seed(0)
    return ASTModel(config=tiny_config(**kw))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()
