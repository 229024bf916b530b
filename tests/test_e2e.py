"""finetune/e2e_cpu.sh on a user's folder (DATA/{train,valid,test}/<label>/*.wav, DATA/unlabeled/), tiny budget."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssast import load

REPO = Path(__file__).resolve().parents[1]


def _tone(path: Path, freq: float, rng: np.random.Generator, seconds: float = 1.0) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t) + 0.02 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), 16000, subtype="PCM_16")


@pytest.fixture
def user_data(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        for label, freq in (("low", 300.0), ("high", 2500.0)):
            for i in range(n):
                _tone(data / split / label / f"{label}{i}.wav", freq, rng)
    for i in range(6):
        _tone(data / "unlabeled" / f"u{i}.wav", rng.uniform(200, 4000), rng, seconds=1.5)
    return data


def test_e2e_on_a_users_folder(tmp_path, user_data):
    env = {**os.environ, "PYTHON": sys.executable, "PRETRAIN_STEPS": "5", "PRETRAIN_BATCH": "4", "FT_EPOCHS": "1",
           "FT_BATCH": "4", "THREADS": "1"}
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "finetune" / "e2e_cpu.sh"), str(out), str(user_data)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("pretrained", "scratch", "logreg"):
        assert 0.0 <= summary[key]["test_acc"] <= 1.0
    assert summary["minutes"] > 0 and summary["settings"]["pretrain_steps"] == "5"
    # The pretrained run started from the pretraining run, which read the unlabeled folder too.
    run = json.loads((out / "pretrain" / "run.json").read_text())
    assert str(user_data / "unlabeled") in json.dumps(run)
    clf = load(out / "ft_pretrained").require_classifier()
    assert sorted(clf.labels) == ["high", "low"] and clf.config.is_frame_model
    assert "pretrained" in r.stdout and "scratch" in r.stdout and "logreg" in r.stdout


def test_e2e_refuses_a_folder_without_splits(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    r = subprocess.run(["bash", str(REPO / "finetune" / "e2e_cpu.sh"), str(tmp_path / "out"), str(tmp_path / "data")],
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert r.returncode == 2 and f"{tmp_path / 'data' / 'valid'}: no such folder" in r.stderr
