"""``ssast embed``: shapes, windows and frame times, equality with a direct ``model.encode`` on
torchaudio's reference fbank, layers, checkpoint kinds, output layout, corrupt files, the command."""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast import ASTModel, ModelConfig, save_checkpoint, save_released
from ssast.audio import load_audio
from ssast.cli import main
from ssast.embed import OUTPUT_KEYS, embed, output_names
from ssast.features import FeatureConfig, fbank_reference, pad_or_crop
from ssast.loading import from_model, load

SR = 16000
FEATURES = FeatureConfig(num_mel_bins=16, target_length=64, mean=-5.0, std=3.0)
WIN = 63 * 160 + 400  # samples of one 64-frame window
HOP = 64 * 160


def config(stage="pretrain", **kw):
    base = dict(embed_dim=64, depth=2, num_heads=1, num_prefix_tokens=2, fshape=4, tshape=4, fstride=4, tstride=4,
                input_fdim=16, input_tdim=64, label_dim=3, model_size="custom", stage=stage)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    return ASTModel(config=config()).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, pretrained):
    p = tmp_path_factory.mktemp("ckpt") / "pre.pt"
    save_checkpoint(pretrained, p, features=FEATURES.to_dict())
    return p


def tone(seconds, f0=700, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio") / "in"
    (root / "site1" / "deep").mkdir(parents=True)
    sf.write(root / "short.wav", tone(0.3), SR)  # shorter than one window
    sf.write(root / "site1" / "long.wav", tone(2.0, 900, 1), SR)  # several windows, a padded last one
    sf.write(root / "site1" / "deep" / "a.wav", tone(0.5, 400, 2), SR)
    sf.write(root / "site1" / "deep" / "a.flac", tone(0.5, 400, 2), SR)  # same stem: names keep the extension
    (root / "site1" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "notes.txt").write_text("not audio")
    return root


def reference_tokens(model, wave):
    """Encoder outputs of a direct model.encode on fbank_reference + pad + normalize."""
    fb = pad_or_crop(fbank_reference(wave, SR, FEATURES.num_mel_bins), FEATURES.target_length)
    with torch.no_grad():
        return model.encode(((fb - FEATURES.mean) / (2 * FEATURES.std))[None])[0]  # (P + N, D)


def pooled(h, cfg):
    p = h[cfg.num_prefix_tokens:]
    return p.mean(0), h[:cfg.num_prefix_tokens].mean(0), p.reshape(*cfg.grid, -1).mean(0)  # (D,), (D,), (t, D)


@pytest.fixture(scope="module")
def run(ckpt, audio, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    return out, embed(ckpt, audio, out, device="cpu", batch_size=3)


def test_outputs_mirror_the_folder(run):
    out, res = run
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [r["npz"] for r in rows] == ["short.npz", "site1/deep/a.flac.npz", "site1/deep/a.wav.npz", "site1/long.npz"]
    assert all((out / r["npz"]).exists() for r in rows)
    assert rows[-1]["windows"] == "4" and float(rows[-1]["duration"]) == pytest.approx(2.0)
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert [s["path"].split("/")[-1] for s in skipped] == ["broken.wav"] and res["skipped"][0]["error"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["features"] == FEATURES.to_dict() and settings["frame_step"] == pytest.approx(0.04)


def test_shapes_and_frame_times(run, audio):
    out, _ = run
    z = np.load(out / "site1" / "long.npz")
    # 2 s = 32000 samples: windows every 64 frames (0.64 s); the last holds 0.08 s of audio.
    np.testing.assert_allclose(z["window_starts"], [0, 0.64, 1.28, 1.92])
    np.testing.assert_allclose(z["window_durations"], [WIN / SR] * 3 + [(32000 - 3 * HOP) / SR])
    assert z["window_avgtok"].shape == (4, 64) and z["window_cls"].shape == (4, 64)
    assert z["clip_avgtok"].shape == (64,) and z["clip_cls"].shape == (64,)
    # 198 frames in the file; time steps every 4 frames, kept while they start in real audio.
    total_frames = 1 + (32000 - 400) // 160
    steps = np.arange(0, total_frames, 4)
    np.testing.assert_allclose(z["frame_times"], steps * 0.01, atol=1e-9)
    assert z["frames"].shape == (len(steps), 64) and z["frames"].dtype == np.float32
    w = z["window_durations"] / z["window_durations"].sum()
    np.testing.assert_allclose(z["clip_avgtok"], (z["window_avgtok"] * w[:, None]).sum(0), rtol=1e-5, atol=1e-6)


def test_equal_to_direct_encode(run, audio, pretrained):
    out, _ = run
    cfg = pretrained.config
    z = np.load(out / "short.npz")
    wave = load_audio(audio / "short.wav", SR)
    avg, cls, frames = pooled(reference_tokens(pretrained, wave), cfg)
    np.testing.assert_allclose(z["clip_avgtok"], avg, atol=2e-5)
    np.testing.assert_allclose(z["clip_cls"], cls, atol=2e-5)
    n_steps = len(z["frame_times"])  # 0.3 s: 28 frames, steps at frames 0, 4, ..., 24
    assert n_steps == 7
    np.testing.assert_allclose(z["frames"], frames[:n_steps], atol=2e-5)
    # The second window of the long file: its own 64 frames.
    z = np.load(out / "site1" / "long.npz")
    wave = load_audio(audio / "site1" / "long.wav", SR)
    avg, cls, frames = pooled(reference_tokens(pretrained, wave[HOP:HOP + WIN]), cfg)
    np.testing.assert_allclose(z["window_avgtok"][1], avg, atol=2e-5)
    np.testing.assert_allclose(z["window_cls"][1], cls, atol=2e-5)
    np.testing.assert_allclose(z["frames"][16:32], frames, atol=2e-5)


def test_layer_hook(ckpt, audio, tmp_path, pretrained):
    embed(ckpt, audio / "short.wav", tmp_path, device="cpu", layer=0, level="clip")
    z = np.load(tmp_path / "short.npz")
    assert "frames" not in z and "clip_avgtok" in z
    fb = pad_or_crop(fbank_reference(load_audio(audio / "short.wav", SR), SR, 16), 64)
    x = ((fb - FEATURES.mean) / (2 * FEATURES.std))[None]
    v = pretrained.v
    with torch.no_grad():
        tokens = v.patch_embed(pretrained.spectrogram(x))
        h = v.blocks[0](torch.cat([v.prefix_tokens(1), tokens], 1) + v.pos_embed)[0]  # block 0, no final norm
    np.testing.assert_allclose(z["clip_avgtok"], h[2:].mean(0), atol=2e-5)
    with pytest.raises(ValueError, match="layer"):
        embed(ckpt, audio / "short.wav", tmp_path, device="cpu", layer=2)


def test_overlapping_windows_and_frame_level(ckpt, audio, tmp_path):
    res = embed(ckpt, audio / "site1" / "long.wav", tmp_path, device="cpu", window=0.64, hop=0.32, level="frame")
    z = np.load(tmp_path / "long.npz")
    assert "clip_avgtok" not in z and "window_avgtok" not in z
    times = z["frame_times"]
    assert np.all(np.diff(times) > 0)  # no repeats where windows overlap
    np.testing.assert_allclose(times, np.arange(0, 198, 4) * 0.01, atol=1e-9)
    assert res["files"][0]["windows"] == len(z["window_starts"]) == 6


def test_released_and_finetuned_checkpoints(pretrained, audio, tmp_path, run):
    out, _ = run
    ref = np.load(out / "short.npz")
    released = tmp_path / "released.pth"
    save_released(pretrained, released)  # no feature settings: AudioSet's normalization
    loaded = load(released, stage="finetune")
    assert loaded.stage == "finetune" and loaded.features.mean == FeatureConfig().mean and not loaded.has_head
    # the same encoder with the project's features gives the same embeddings
    embed(from_model(loaded.model, features=FEATURES), audio / "short.wav", tmp_path / "r", device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "r" / "short.npz")["clip_avgtok"], ref["clip_avgtok"], atol=1e-5)
    # a fine-tuned checkpoint: its encoder, its head unused
    torch.manual_seed(1)
    ft = ASTModel(config=config("finetune"))
    ft.v.load_state_dict(pretrained.v.state_dict())
    p = tmp_path / "ft.pt"
    save_checkpoint(ft, p, labels=["a", "b", "c"], features=FEATURES.to_dict())
    embed(p, audio / "short.wav", tmp_path / "f", device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "f" / "short.npz")["clip_cls"], ref["clip_cls"], atol=1e-5)


def test_output_names_outside_base(tmp_path):
    names = output_names([str(tmp_path / "x" / "a.wav"), "/elsewhere/b.wav"], tmp_path)
    assert names[0].as_posix() == "x/a.npz" and names[1].as_posix() == "elsewhere/b.npz"


def test_cli(ckpt, audio, tmp_path, capsys):
    rc = main(["embed", str(ckpt), str(audio), "--out", str(tmp_path), "--device", "cpu", "--no-progress",
               "--level", "clip", "--batch-size", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "4 file(s) embedded, 1 skipped" in err and "broken.wav" in err
    z = np.load(tmp_path / "site1" / "long.npz")
    assert "frames" not in z and z["window_avgtok"].shape == (4, 64)
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "site1" / "long.npz", tmp_path / "index.csv", tmp_path / "settings.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f  # the user's normal permissions
    assert main(["embed", str(ckpt), str(audio / "site1" / "broken.wav"), "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 1


def test_help_lists_the_output_keys(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    for key in OUTPUT_KEYS:
        assert key in out
    assert "frame_times" in out and "tstride * 10 ms" in out
