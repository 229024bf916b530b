import subprocess
import sys

import torch

from ssast import load


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "ssast.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "info", "export"):
        assert cmd in out.stdout


def test_demo_runs_end_to_end(tmp_path):
    from ssast.cli import main

    assert main(["demo", "--out", str(tmp_path), "--pretrain-steps", "2", "--finetune-steps", "2"]) == 0
    pre = load(tmp_path / "pretrained.pt")
    assert pre.stage == "pretrain"
    released = torch.load(tmp_path / "pretrained_released.pth", weights_only=True)
    assert "module.p_input_tdim" in released
    clf = load(tmp_path / "finetuned.pt").require_classifier()
    assert clf.labels == ["rising", "falling"]
    assert clf.model(torch.randn(1, 128, 128)).shape == (1, 2)
