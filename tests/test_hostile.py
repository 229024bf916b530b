"""Hostile audio through the data path: a clip of huge finite samples, non-finite features and
very long files in ``ssast stats``, and the dataset's skip-and-count."""
import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast.cli import main
from ssast.datasets import AudioDataset
from ssast.features import fbank_reference, pad_or_crop


def _noise(path, seconds, sr=16000, seed=0, scale=0.3):
    x = np.random.default_rng(seed).uniform(-scale, scale, int(sr * seconds))
    sf.write(path, x.astype(np.float32), sr, subtype="FLOAT")
    return torch.from_numpy(x.astype(np.float32))


def _reference(waves, target):
    """torchaudio's per-clip Kaldi fbank, cropped to ``target`` frames: pooled mean and std."""
    values = torch.cat([fbank_reference(w, 16000)[:target].reshape(-1) for w in waves]).double()
    return values.mean().item(), values.std().item()


def _stats(tmp_path, src, *extra):
    out = tmp_path / "stats.json"
    rc = main(["stats", str(src), "--json", str(out), "--no-progress", "--device", "cpu", *extra])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def test_stats_skips_a_clip_of_huge_samples(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    good = _noise(data / "good.wav", 1.0)
    sf.write(data / "loud.wav", np.full(16000, 1e30, dtype=np.float32), 16000, subtype="FLOAT")
    rc, result = _stats(tmp_path, data, "--target-length", "50")
    err = capsys.readouterr()
    assert rc == 0
    assert result["clips"] == 1 and [s["path"] for s in result["skipped"]] == [str(data / "loud.wav")]
    assert "samples up to 1e+30" in result["skipped"][0]["problem"] and "loud.wav" in err.err
    mean, std = _reference([good], 50)
    assert math.isfinite(result["mean"]) and abs(result["mean"] - mean) < 1e-5 and abs(result["std"] - std) < 1e-5
    assert "nan" not in err.out


def test_stats_checks_each_clips_features(tmp_path, capsys, monkeypatch):
    """Features that are not finite for another reason are caught per clip in the batch: the
    other clips of that batch still count, and nothing usable left is an error, not 'mean: nan'."""
    import ssast.audio
    import ssast.commands.stats

    data = tmp_path / "data"
    data.mkdir()
    waves = [_noise(data / f"{i}.wav", 0.5, seed=i) for i in range(3)]
    real_load = ssast.audio.load_audio

    def load(path, *args, **kwargs):  # decodes 1.wav as it is, past the sample check
        wave = real_load(path, *args, **kwargs)
        return wave * 1e30 if str(path).endswith("1.wav") else wave

    monkeypatch.setattr(ssast.commands.stats, "load_audio", load)
    rc, result = _stats(tmp_path, data, "--target-length", "40", "--batch-size", "3")
    assert rc == 0 and result["clips"] == 2
    assert result["skipped"] == [{"path": str(data / "1.wav"), "problem": "fbank features are not finite (inf or NaN)"}]
    mean, std = _reference([waves[0], waves[2]], 40)
    assert abs(result["mean"] - mean) < 1e-5 and abs(result["std"] - std) < 1e-5
    capsys.readouterr()
    for p in (data / "0.wav", data / "2.wav"):
        p.unlink()
    rc, result = _stats(tmp_path / "none", data, "--target-length", "40")
    err = capsys.readouterr()
    assert rc == 2 and result is None
    assert "no usable clip" in err.err and "1.wav" in err.err and "mean" not in err.out


def test_stats_of_a_long_file_reads_only_the_target_length(tmp_path, monkeypatch):
    target = 100  # frames: 99 * 160 + 400 = 16240 samples
    needed = 99 * 160 + 400
    (tmp_path / "full").mkdir()
    long = _noise(tmp_path / "full" / "long.wav", 60.0)  # 960000 samples
    (tmp_path / "cropped").mkdir()
    sf.write(tmp_path / "cropped" / "long.wav", long[:needed].numpy(), 16000, subtype="FLOAT")
    requested = []
    real_read = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    rc, full = _stats(tmp_path / "full", tmp_path / "full", "--target-length", str(target))
    assert rc == 0 and requested == [needed]
    rc, cropped = _stats(tmp_path / "cropped", tmp_path / "cropped", "--target-length", str(target))
    assert rc == 0
    for key in ("mean", "std", "frames", "values"):
        assert full[key] == cropped[key]
    assert full["frames"] == target
    mean, std = _reference([long], target)  # torchaudio on the whole minute, cropped after
    assert abs(full["mean"] - mean) < 1e-5 and abs(full["std"] - std) < 1e-5


def test_stats_of_a_long_resampled_file(tmp_path):
    """A 44.1 kHz file: the partial read gives the stats of the whole file resampled."""
    import torchaudio.functional as AF

    (tmp_path / "d").mkdir()
    x = _noise(tmp_path / "d" / "a.wav", 20.0, sr=44100)
    rc, result = _stats(tmp_path, tmp_path / "d", "--target-length", "60")
    assert rc == 0 and result["frames"] == 60
    mean, std = _reference([AF.resample(x, 44100, 16000)], 60)
    assert abs(result["mean"] - mean) < 1e-4 and abs(result["std"] - std) < 1e-4


def test_dataset_skips_and_counts_a_clip_of_huge_samples(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    _noise(data / "a.wav", 0.2)
    sf.write(data / "b.wav", np.full(3200, 1e30, dtype=np.float32), 16000, subtype="FLOAT")
    _noise(data / "c.wav", 0.2, seed=1)
    ds = AudioDataset(data, num_samples=1600, train=False)
    assert len(ds) == 3  # the header is fine: found when the clip is read
    with caplog.at_level(logging.WARNING, logger="ssast.datasets"):
        items = [ds[i] for i in range(len(ds))]
    assert [it["path"].rsplit("/", 1)[-1] for it in items] == ["a.wav", "c.wav", "c.wav"]  # b replaced by the next
    assert ds.skipped.counts()["audio"] == 1
    assert "b.wav" in caplog.text and "features would not be finite" in caplog.text
    assert all(torch.isfinite(pad_or_crop(fbank_reference(it["wave"], 16000), 10)).all() for it in items)


def test_a_clip_of_huge_samples_through_predict_embed_and_evaluate(tmp_path, capsys):
    """Named and skipped by every command that reads audio; the JSON it writes stays valid JSON."""
    import json

    from ssast import ASTModel, ModelConfig, save_checkpoint
    from ssast.cli import main
    from ssast.features import FeatureConfig

    cfg = ModelConfig(embed_dim=16, depth=1, num_heads=1, fshape=4, tshape=4, fstride=4, tstride=4, input_fdim=16,
                      input_tdim=32, label_dim=2, model_size="custom", stage="finetune")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ASTModel(config=cfg), ckpt, labels=["a", "b"], features=FeatureConfig(num_mel_bins=16, target_length=32).to_dict())
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        _noise(data / label / "ok.wav", 0.5, seed=ord(label))
    sf.write(data / "a" / "loud.wav", np.full(8000, 1e30, dtype=np.float32), 16000, subtype="FLOAT")

    out = tmp_path / "p.json"
    assert main(["predict", str(ckpt), str(data), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert [e["path"].rsplit("/", 1)[1] for e in result["errors"]] == ["loud.wav"]
    assert "features would not be finite" in result["errors"][0]["error"] and len(result["files"]) == 2

    assert main(["embed", str(ckpt), str(data), "--out", str(tmp_path / "e"), "--no-progress", "--device", "cpu"]) == 0
    assert "loud.wav" in (tmp_path / "e" / "skipped.csv").read_text()
    assert not (tmp_path / "e" / "a" / "loud.npz").exists() and (tmp_path / "e" / "a" / "ok.npz").exists()

    capsys.readouterr()
    res = tmp_path / "r.json"
    assert main(["evaluate", str(ckpt), "--data", str(data), "--json", str(res), "--no-progress", "--device", "cpu"]) == 0
    assert "loud.wav" in capsys.readouterr().err
    report = json.loads(res.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert report["num_clips"] == 2 and [s["path"].rsplit("/", 1)[1] for s in report["skipped"]] == ["loud.wav"]
