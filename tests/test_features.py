"""Batched Kaldi fbank against torchaudio's per-clip ``compliance.kaldi.fbank`` (the golden values),
the feature extractor, dataset statistics and the ``ssast stats`` command."""
import contextlib
import json
import shutil
import subprocess

import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from ssast.audio import load_audio
from ssast.checkpoint import read_checkpoint, save_checkpoint
from ssast.features import (
    FeatureConfig,
    FeatureExtractor,
    compute_stats,
    fbank,
    fbank_reference,
    num_frames,
    pad_or_crop,
)

TOL = 1e-4  # absolute, on log-mel values


@contextlib.contextmanager
def one_thread():
    """torchaudio's reference as the recipes ran it: in DataLoader workers, one thread each.

    torch splits a single clip's mean over threads, so torchaudio's own output moves with the
    thread count in mel bins whose energy is near the float32 floor; one thread fixes it.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def reference(waves: torch.Tensor, sr: int) -> torch.Tensor:
    with one_thread():
        return torch.stack([fbank_reference(w, sr) for w in waves.reshape(-1, waves.shape[-1])])


def pcm16(x: torch.Tensor) -> torch.Tensor:
    """Round to 16-bit PCM levels, as audio read from a file is."""
    return (x.clamp(-1, 1) * 32767).round() / 32767


def sweep(n: int, sr: int, f0=50.0) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    f1 = 0.45 * sr
    dur = n / sr
    phase = 2 * torch.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur))
    return (0.5 * torch.sin(phase)).float()


def signals(n: int, sr: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    noise = 0.1 * torch.randn(n, generator=g)
    brown = torch.cumsum(torch.randn(n, generator=g), 0)
    brown = 0.5 * (brown - brown.mean()) / brown.abs().max()
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05  # with a DC offset
    return pcm16(torch.stack([sweep(n, sr), noise, brown, tone]))


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "the quick brown fox jumps over the lazy dog"],
                   check=True, capture_output=True)
    return out


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
@pytest.mark.parametrize("seconds", [1.0, 2.37])
def test_batch_equals_torchaudio_per_clip(sr, seconds):
    waves = signals(int(sr * seconds), sr, seed=sr)
    out = fbank(waves, sr)
    ref = reference(waves, sr)
    assert out.shape == ref.shape == (4, num_frames(waves.shape[-1], sr), 128)
    assert (out - ref).abs().max().item() < TOL


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
def test_speech_batch_equals_torchaudio(speech_wav, sr):
    w = load_audio(speech_wav, sr)  # espeak-ng writes 22.05 kHz: resampled up and down
    n = len(w) // 2
    waves = torch.stack([w[:n], w[n:2 * n], w[n // 3:n // 3 + n], 0.3 * w[:n].flip(0)])
    assert (fbank(waves, sr) - reference(waves, sr)).abs().max().item() < TOL


def test_shortest_clip_and_float_signal():
    sr = 16000
    # one frame plus a few samples; an unquantized float sweep (values near the log floor excluded,
    # where float32 rounding alone decides torchaudio's own output)
    waves = torch.stack([sweep(403, sr), sweep(403, sr, 300.0)])
    out, ref = fbank(waves, sr), reference(waves, sr)
    assert out.shape == (2, 1, 128)
    assert (out - ref).abs().max().item() < TOL
    long = torch.stack([sweep(3 * sr, sr), sweep(3 * sr, sr, 1000.0)])
    out, ref = fbank(long, sr), reference(long, sr)
    above_floor = ref > -12  # a sweep leaves most bins of a frame empty: about 1 value in 6 is above
    assert above_floor.float().mean() > 0.1
    assert (out - ref)[above_floor].abs().max().item() < TOL


def test_leading_dims_and_single_clip():
    sr = 16000
    waves = signals(sr, sr, seed=1).reshape(2, 2, -1)
    out = fbank(waves, sr, num_mel_bins=64)
    assert out.shape == (2, 2, 98, 64)
    with one_thread():
        ref = torch.stack([kaldi.fbank(w[None] - w.mean(), htk_compat=True, sample_frequency=sr, use_energy=False,
                                       window_type="hanning", num_mel_bins=64, dither=0.0, frame_shift=10)
                           for w in waves.reshape(4, -1)])
    assert (out.reshape(4, 98, 64) - ref).abs().max().item() < TOL
    one = fbank(waves[0, 0], sr, num_mel_bins=64)
    assert one.shape == (98, 64)
    assert (one - ref[0]).abs().max().item() < TOL


@pytest.mark.parametrize("window", ["hamming", "povey", "rectangular", "blackman"])
def test_other_windows_and_frames(window):
    sr = 16000
    waves = signals(sr // 2, sr, seed=2)
    out = fbank(waves, sr, 40, window=window, frame_length_ms=32.0, frame_shift_ms=8.0)
    with one_thread():
        ref = torch.stack([kaldi.fbank(w[None] - w.mean(), htk_compat=True, sample_frequency=sr, use_energy=False,
                                       window_type=window, num_mel_bins=40, dither=0.0, frame_shift=8.0,
                                       frame_length=32.0) for w in waves])
    assert (out - ref).abs().max().item() < TOL


def test_unequal_lengths_with_lengths_argument():
    sr = 16000
    clips = [signals(n, sr, seed=n)[i] for i, n in enumerate([16000, 9000, 12345, 400])]
    lens = torch.tensor([len(c) for c in clips])
    batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    out = fbank(batch, sr, lengths=lens)  # (4, 98, 128)
    for c, o in zip(clips, out):
        with one_thread():
            ref = fbank_reference(c, sr)
        k = ref.shape[0]
        assert (o[:k] - ref).abs().max().item() < TOL
        assert (o[k:] == 0).all()  # the recipes' zero padding of a shorter clip's fbank


def test_errors():
    with pytest.raises(ValueError, match="shorter than one"):
        fbank(torch.zeros(2, 300), 16000)
    with pytest.raises(ValueError, match="window"):
        fbank(torch.zeros(2, 3000), 16000, window="kaiser")
    with pytest.raises(ValueError, match="shorter than one"):
        fbank(torch.zeros(2, 3000), 16000, lengths=[3000, 100])


def test_integer_and_float64_input():
    sr = 16000
    w = signals(sr, sr, seed=3)
    ints = (w * 32767).round().short()
    with one_thread():
        ref = torch.stack([fbank_reference(x.float(), sr) for x in ints])
    assert (fbank(ints, sr) - ref).abs().max().item() < TOL
    with one_thread():
        ref64 = torch.stack([fbank_reference(x, sr) for x in w.double()])
    out64 = fbank(w.double(), sr)
    assert out64.dtype == torch.float64
    assert (out64 - ref64).abs().max().item() < 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batch_equals_torchaudio_cpu(speech_wav):
    sr = 16000
    w = load_audio(speech_wav, sr)
    waves = torch.cat([signals(len(w), sr, seed=s) for s in range(3)] + [w[None]])  # (13, samples)
    out = fbank(waves.cuda(), sr)
    assert out.is_cuda
    ref = reference(waves, sr)
    # Mel energies within a few hundred times float32 epsilon (log-mel below -10) are float32
    # rounding noise: there torchaudio's own output changes with the thread count by up to ~5e-3,
    # and cuFFT rounds differently again. Everywhere else the values must agree to 1e-4.
    meaningful = ref > -10
    assert (out.cpu() - ref)[meaningful].abs().max().item() < TOL
    assert (out.cpu() - ref).abs().max().item() < 1e-2


# ----------------------------------------------------------------------------- extractor

def test_pad_or_crop():
    x = torch.randn(2, 5, 3)
    assert torch.equal(pad_or_crop(x, 3), x[:, :3])
    y = pad_or_crop(x, 8)
    assert y.shape == (2, 8, 3) and torch.equal(y[:, :5], x) and (y[:, 5:] == 0).all()
    assert pad_or_crop(x, 5) is x


def test_extractor_matches_recipe():
    sr = 16000
    cfg = FeatureConfig(target_length=120)
    fe = FeatureExtractor(cfg)
    waves = signals(sr, sr, seed=4)  # 98 frames: padded to 120
    out = fe(waves)
    ref = pad_or_crop(reference(waves, sr), 120)
    expected = (ref - cfg.mean) / (2 * cfg.std)
    assert out.shape == (4, 120, 128)
    assert (out - expected).abs().max().item() < TOL / 9
    # padded frames hold the normalized zero, as in the recipes
    assert torch.allclose(out[:, 98:], torch.full_like(out[:, 98:], -cfg.mean / (2 * cfg.std)))
    assert fe(waves[0]).shape == (1, 120, 128)
    cropped = FeatureExtractor(FeatureConfig(target_length=50))(waves)
    assert torch.allclose(cropped, out[:, :50])


def test_extractor_list_of_unequal_clips():
    sr = 16000
    clips = [signals(16000, sr, seed=5)[0], signals(7000, sr, seed=6)[1], signals(16000, sr, seed=7)[2]]
    fe = FeatureExtractor(FeatureConfig(target_length=100))
    out = fe(clips)
    for c, o in zip(clips, out):
        with one_thread():
            ref = fe.normalize(pad_or_crop(fbank_reference(c, sr), 100))
        assert (o - ref).abs().max().item() < TOL


def test_extractor_refuses_or_resamples_wrong_rate():
    w = signals(8000, 8000, seed=8)
    fe = FeatureExtractor(FeatureConfig(target_length=100))
    with pytest.raises(ValueError, match="8000 Hz"):
        fe(w, sample_rate=8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        fe(list(w), sample_rate=8000)
    assert fe(w, sample_rate=16000).shape == (4, 100, 128)  # the configured rate is fine
    rs = FeatureExtractor(fe.config, resample=True)
    out = rs(w, sample_rate=8000)
    assert torch.allclose(out, fe(AF.resample(w, 8000, 16000)))


def test_config_round_trip_and_checkpoint(tmp_path):
    from conftest import tiny_model
    from ssast import presets

    cfg = presets.get("esc50").features()
    assert (cfg.mean, cfg.std, cfg.target_length) == (-6.6268077, 5.358466, 512)
    d = cfg.to_dict()
    assert d == {"sample_rate": 16000, "num_mel_bins": 128, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
                 "window": "hanning", "mean": -6.6268077, "std": 5.358466, "target_length": 512}
    assert FeatureConfig.from_dict(d) == cfg
    assert FeatureConfig.from_dict({}) == FeatureConfig()
    with pytest.raises(ValueError, match="hop"):
        FeatureConfig.from_dict({"hop": 3})
    with pytest.raises(ValueError, match="window"):
        FeatureConfig(window="kaiser")
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model(), path, features=cfg.to_dict())
    assert FeatureExtractor.from_dict(read_checkpoint(path).features).config == cfg


# ----------------------------------------------------------------------------- statistics

def _stats_reference(clips, sr, target, include_padding):
    with one_thread():
        feats = [fbank_reference(c, sr) for c in clips]
    feats = [pad_or_crop(f, target) if include_padding else f[:target] for f in feats]
    values = torch.cat([f.reshape(-1) for f in feats]).double()
    return values.mean().item(), values.std().item(), sum(f.shape[0] for f in feats)


@pytest.mark.parametrize("include_padding", [False, True])
def test_compute_stats(include_padding):
    sr = 16000
    clips = [signals(n, sr, seed=n)[n % 4] for n in (16000, 5000, 24000, 9000, 16000)]
    cfg = FeatureConfig(target_length=120)  # 24000 samples give 148 frames: cropped
    mean, std, frames = _stats_reference(clips, sr, 120, include_padding)
    for bs in (1, 2, 32):
        s = compute_stats(clips, cfg, include_padding=include_padding, batch_size=bs)
        assert abs(s.mean - mean) < 1e-5 and abs(s.std - std) < 1e-5
        assert s.clips == 5 and s.frames == frames and s.values == frames * 128


def _write_dataset(root):
    sr = 16000
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    clips = [signals(n, sr, seed=n)[n % 4] for n in (16000, 8000, 12000)]
    sf.write(root / "a" / "one.wav", clips[0].numpy(), sr, subtype="PCM_16")
    sf.write(root / "a" / "two.flac", clips[1].numpy(), sr, subtype="PCM_16")
    sf.write(root / "b" / "three.wav", AF.resample(clips[2], sr, 8000).numpy(), 8000, subtype="PCM_16")
    (root / "b" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "b" / "tiny.wav").write_bytes(b"")
    return sorted([root / "a" / "one.wav", root / "a" / "two.flac", root / "b" / "three.wav"])


def test_stats_command(tmp_path, capsys):
    from ssast.cli import main

    good = _write_dataset(tmp_path / "data")
    out = tmp_path / "stats.json"
    rc = main(["stats", str(tmp_path / "data"), "--target-length", "80", "--json", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.wav" in captured.err and "tiny.wav" in captured.err
    result = json.loads(out.read_text())
    assert {s["path"].rsplit("/", 1)[-1] for s in result["skipped"]} == {"broken.wav", "tiny.wav"}
    assert all(s["problem"] for s in result["skipped"])
    mean, std, frames = _stats_reference([load_audio(p) for p in good], 16000, 80, False)
    assert result["clips"] == 3 and result["frames"] == frames
    assert abs(result["mean"] - mean) < 1e-5 and abs(result["std"] - std) < 1e-5
    assert f"mean: {result['mean']:.7f}" in captured.out
    assert result["features"]["target_length"] == 80


def test_stats_command_limit_and_no_usable_clip(tmp_path, capsys):
    from ssast.cli import main

    _write_dataset(tmp_path / "data")
    assert main(["stats", str(tmp_path / "data"), "--limit", "1", "--no-progress"]) == 0
    assert "clips: 1 used, 0 skipped" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"not audio")
    assert main(["stats", str(bad), "--no-progress"]) == 2
    assert "no usable clip" in capsys.readouterr().err
