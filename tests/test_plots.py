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
from ssast.predict import Detection, FileResult, Predictor, predict

pytest.importorskip("matplotlib")

from ssast.plots import (  # noqa: E402
    PADDING_LABEL,
    file_spectrogram,
    mask_figure,
    plot_mask_visualization,
    plot_timeline,
    timeline_figure,
)

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
    # Named as the Raven tables are: the input folders mirrored below --plot-dir.
    assert sorted(p.relative_to(plots).as_posix() for p in plots.rglob("*.png")) == ["a/x.png", "b/x.png"]
    assert png_size(plots / "a" / "x.png") == (1400, 800)
    assert main(["plot-timeline", str(tmp_path / "r.json"), "--out-dir", str(tmp_path / "again")]) == 0
    again = tmp_path / "again"
    assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*.png")) == ["a/x.png", "b/x.png"]


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


def speech_commands_result(path="clip.wav") -> FileResult:
    """A 4 s result of Speech Commands-style labels: full scores of 1 s windows every 0.5 s, two detections."""
    labels = ["_silence_", "_unknown_", "yes"]
    starts = np.arange(7) * 8000
    scores = np.zeros((7, 3), dtype=np.float32)
    scores[:, 0] = [0.9, 0.8, 0.2, 0.1, 0.1, 0.3, 0.2]
    scores[:, 1] = [0.1, 0.1, 0.1, 0.6, 0.7, 0.2, 0.1]
    scores[:, 2] = 0.05
    dets = [Detection("_silence_", 0, 0.0, 1.5, 0.9, 0.85, 2), Detection("_unknown_", 1, 1.5, 3.0, 0.7, 0.65, 2)]
    top = np.argsort(-scores, axis=1)
    return FileResult(path, SR, SR, labels, starts, np.full(7, SR), top, np.take_along_axis(scores, top, 1),
                      scores.max(axis=0), dets, 0.5, num_samples=4 * SR, scores=scores)


def test_timeline_legend_shows_every_label_the_detection_key_and_a_colorbar():
    res = speech_commands_result()
    spec = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    fig = timeline_figure(res, spectrogram=spec, width=900, height=500)
    score_ax = fig.axes[1]
    texts = [t.get_text() for t in score_ax.get_legend().get_texts()]
    assert texts[:3] == ["_silence_", "_unknown_", "yes"]  # detected first, then by their highest score
    assert "threshold 0.5" in texts
    key = [t for t in texts if t.startswith("detected")]
    assert len(key) == 1 and "\u2265 0.5" in key[0] and "bar" in key[0]
    image = fig.axes[0].images[0]
    assert image.colorbar is not None and image.colorbar.ax.get_ylabel() == "log-mel energy"
    assert image.colorbar.ax in fig.axes[0].child_axes  # beside the spectrogram
    # Without the spectrogram: no bars, so the key says shaded only; labels are still all there.
    fig = timeline_figure(res, labels=["yes", "_silence_"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[:2] == ["yes", "_silence_"] and "bar" not in texts[-1] and len(fig.axes) == 1


def padding_pixels(fig, ax, x0, x1, y0, y1):
    """RGB pixels of the rendered figure inside a data box of ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    h = rgba.shape[0]
    (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
    return rgba[int(h - py1):int(h - py0), int(px0):int(px1), :3].astype(int)


def test_mask_view_in_seconds_with_the_padding_marked():
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, fshape=4, tshape=4, fstride=4, tstride=4, input_fdim=16,
                      input_tdim=32, model_size="custom", stage="pretrain")
    model = ASTModel(config=cfg)
    wave = torch.from_numpy(tone(0.2))  # shorter than the model's 32 frames: zero-padded
    real = fbank_reference(wave, SR, num_mel_bins=16).shape[0]  # frames holding the clip: 18
    fig, _ = mask_figure(model, wave, mask_patch=10, seed=3, features=FeatureConfig(num_mel_bins=16))
    axes = fig.axes[:3]
    assert axes[-1].get_xlabel() == "time (s)" and axes[-1].get_xlim() == pytest.approx((0, 0.32))
    fig.canvas.draw()
    shown = [float(t.get_text().replace("\u2212", "-")) for t in axes[-1].get_xticklabels()
             if 0 <= t.get_position()[0] <= 0.32 + 1e-9]
    assert len(shown) >= 3 and max(shown) <= 0.32 and any(0 < v < 1 for v in shown)  # seconds, not frames
    for ax in axes:
        (pad,) = [p for p in ax.patches if p.get_label() == PADDING_LABEL]
        assert pad.get_x() == pytest.approx(real * 0.01) and pad.get_width() == pytest.approx((32 - real) * 0.01)
        assert pad.get_hatch()
    assert any(t.get_text() == "padding" for t in axes[0].texts)
    # Drawn as padding: light grey behind the hatching, not a colour of the colour map.
    px = padding_pixels(fig, axes[0], real * 0.01 + 0.02, 0.31, 1, 15)
    spread = px.max(axis=2) - px.min(axis=2)
    assert np.median(spread) < 8 and np.median(px) > 150
    clip = padding_pixels(fig, axes[0], 0.0, real * 0.01 - 0.02, 1, 15)
    assert np.median(clip.max(axis=2) - clip.min(axis=2)) > 40  # the clip itself is in colour
    assert any(a.get_ylabel() == "normalized log-mel" for a in fig.axes[3:])  # its colorbar
    # A clip that fills the input has no padding.
    fig, _ = mask_figure(model, torch.from_numpy(tone(0.5)), mask_patch=10, features=FeatureConfig(num_mel_bins=16))
    assert not [p for ax in fig.axes for p in ax.patches if p.get_label() == PADDING_LABEL]
