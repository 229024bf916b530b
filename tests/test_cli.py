import subprocess
import sys

from ssast import load


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "ssast.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "info", "export"):
        assert cmd in out.stdout


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The demo's stages (synth-speech, prep, shards, pretrain, finetune, predict) at a small size."""
    import json

    from ssast.cli import main

    assert main(["demo", "--out", str(tmp_path), "--words", "yes", "no", "--per-word", "8", "--silence", "4",
                 "--unknown", "4", "--unlabeled", "8", "--pretrain-steps", "3", "--finetune-epochs", "1",
                 "--recording-seconds", "8", "--events", "2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["detection"]["events"] == 2
    assert (tmp_path / "plots" / "recording.png").exists()
    events = json.loads((tmp_path / "recording_events.json").read_text())
    assert [e["label"] for e in events] and all(e["label"] in ("yes", "no") for e in events)
    pre = load(tmp_path / "pretrain")
    assert pre.stage == "pretrain" and pre.config.is_frame_model
    clf = load(tmp_path / "finetune").require_classifier()
    assert set(clf.labels) == {"yes", "no", "_silence_", "_unknown_"}
    out = capsys.readouterr().out
    assert "test accuracy" in out and "precision" in out and "recall" in out
