"""Pictures: detection timeline, masked-patch view, the file spectrogram behind the timeline."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast import ASTModel, ModelConfig, save_checkpoint
from ssast.cli import main
from ssast.features import FeatureConfig, fbank_reference
from ssast.predict import Predictor, predict

pytest.importorskip("matplotlib")

from ssast.plots import file_spectrogram, plot_mask_visualization, plot_timeline  # noqa: E402

SR = 16000
FEATURES = FeatureConfig(num_mel_bins=16, target_length=64)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tone(seconds, seed=0):
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.05 * g.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 900 * t) * (t % 2 < 0.7)).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, fshape=4, tshape=4, fstride=4, tstride=4, input_fdim=16,
                      input_tdim=64, label_dim=4, model_size="custom", stage="finetune")
    path = tmp_path_factory.mktemp("ckpt") / "clf.pt"
    save_checkpoint(ASTModel(config=cfg), path, labels=["a", "b", "c", "d"], features=FEATURES.to_dict())
    return path


def test_plotting_modules_do_not_import_matplotlib():
    code = "import sys, ssast.plots, ssast.predict, ssast.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_timeline_png(tmp_path, ckpt):
    wav = tmp_path / "rec.wav"
    sf.write(wav, tone(6.0), SR)
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    run = predict(p, [wav], threshold=0.3, keep_scores=True, progress=False)
    (res,) = run.files
    assert res.scores.shape == (len(res.starts), 4)
    spec = file_spectrogram(wav, FEATURES)
    out = tmp_path / "timeline.png"
    plot_timeline(res, out, spectrogram=spec, width=900, height=500)
    assert png_size(out) == (900, 500)
    # From the JSON output (top-k scores only), without a spectrogram; labels chosen by name.
    entry = json.loads(json.dumps(run.to_dict()))["files"][0]
    plot_timeline(entry, tmp_path / "from_json.png", labels=["b", "d"])
    assert png_size(tmp_path / "from_json.png") == (1400, 800)
    with pytest.raises(ValueError, match="unknown label"):
        plot_timeline(res, tmp_path / "x.png", labels=["zebra"])


def test_predict_plot_dir_writes_one_png_per_file(tmp_path, ckpt):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sf.write(tmp_path / "a" / "x.wav", tone(2.0), SR)
    sf.write(tmp_path / "b" / "x.wav", tone(1.0, seed=1), SR)  # same stem in another folder
    plots = tmp_path / "plots"
    assert main(["predict", str(ckpt), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r.json"),
                 "--plot-dir", str(plots), "--no-progress"]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["x.png", "x_2.png"]
    assert png_size(plots / "x.png") == (1400, 800)
    assert main(["plot-timeline", str(tmp_path / "r.json"), "--out-dir", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["x.png", "x_2.png"]


def test_file_spectrogram_is_the_fbank_of_the_whole_file(tmp_path):
    wav = tmp_path / "long.wav"
    x = tone(7.3)
    sf.write(wav, x, SR, subtype="FLOAT")
    ref = fbank_reference(torch.from_numpy(x), SR, num_mel_bins=16)  # (frames, 16), all at once
    got = file_spectrogram(wav, FEATURES, max_columns=10**6, block_seconds=0.77)  # frames across many blocks
    assert got.shape == tuple(ref.shape)
    assert np.abs(got - ref.numpy()).max() < 1e-3
    pooled = file_spectrogram(wav, FEATURES, max_columns=100, block_seconds=0.77)
    pool = -(-ref.shape[0] // 100)
    assert pooled.shape == (-(-ref.shape[0] // pool), 16)
    assert np.abs(pooled[3] - ref[3 * pool:4 * pool].mean(dim=0).numpy()).max() < 1e-3


def test_mask_visualization_png(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, fshape=4, tshape=4, fstride=4, tstride=4, input_fdim=16,
                      input_tdim=32, model_size="custom", stage="pretrain")
    model = ASTModel(config=cfg)
    out = tmp_path / "mask.png"
    vis = plot_mask_visualization(model, torch.from_numpy(tone(0.5)), out, mask_patch=10, seed=3,
                                  features=FeatureConfig(num_mel_bins=16), width=800, height=600)
    assert png_size(out) == (800, 600)
    assert vis.mask_index.shape == (1, 10) and vis.correct.shape == (1, 10)
    again = plot_mask_visualization(model, torch.from_numpy(tone(0.5)), tmp_path / "b.png", mask_patch=10, seed=3,
                                    features=FeatureConfig(num_mel_bins=16))
    assert torch.equal(vis.mask_index, again.mask_index)  # the seed fixes the mask
    with pytest.raises(ValueError, match="pretraining-stage"):
        plot_mask_visualization(ASTModel(config=cfg.replace(stage="finetune")), torch.zeros(32, 16), out)
    path = tmp_path / "pre.pt"
    save_checkpoint(model, path)
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(1.0), SR)
    assert main(["visualize-mask", str(path), str(wav), "--out", str(tmp_path / "cli.png"), "--start", "0.2"]) == 0
    assert png_size(tmp_path / "cli.png") == (1400, 900)
