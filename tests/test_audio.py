import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from ssast.audio import AudioError, audio_info, decode_audio, encode_flac, load_audio


def _tone(sr, seconds=0.5, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


@pytest.mark.parametrize("fmt,subtype,ext", [
    ("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"), ("WAV", "PCM_32", "wav"), ("WAV", "FLOAT", "wav"),
    ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3"),
])
def test_formats_read_as_float_in_unit_range(tmp_path, fmt, subtype, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt}")
    path = tmp_path / f"a.{ext}"
    sf.write(path, _tone(16000), 16000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.shape[0] - 8000) <= 1200  # lossy codecs add or trim a few frames
    assert 0.3 < wave.abs().max() < 0.5
    if fmt in ("WAV", "FLAC"):  # lossless: the samples themselves
        assert torch.allclose(wave, torch.from_numpy(_tone(16000)).float(), atol=1e-4)


def test_resampled_to_the_model_rate_and_downmixed(tmp_path):
    stereo = _tone(44100, channels=2)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    wave = load_audio(path, sample_rate=16000)
    mono = torch.from_numpy(stereo.mean(axis=1)).float()
    assert torch.allclose(wave, AF.resample(mono, 44100, 16000), atol=1e-6)
    assert wave.shape[0] == 8000
    assert load_audio(path, sample_rate=8000).shape[0] == 4000


def test_flac_bytes_round_trip():
    x = torch.from_numpy(_tone(16000)).float()
    data = encode_flac(x, 16000)
    assert data[:4] == b"fLaC"
    assert torch.allclose(decode_audio(data, 16000, name="mem"), x, atol=1 / 32768)


@pytest.mark.parametrize("content,match", [
    (b"not audio at all", "unreadable audio"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "unreadable audio"),
])
def test_unreadable_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=match) as e:
        load_audio(path)
    assert str(path) in str(e.value)
    with pytest.raises(AudioError, match="unreadable"):
        audio_info(path)


def test_empty_short_missing_and_folder(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 16000)
    with pytest.raises(AudioError, match="empty") as e:
        load_audio(empty)
    assert "empty.wav" in str(e.value)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100), 16000)  # 6 ms: no 25 ms analysis frame
    with pytest.raises(AudioError, match="too short"):
        load_audio(short)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="empty"):
        decode_audio(b"", name="x")


# ----------------------------------------------------------------------------- hostile values

def _write_float(path, x, sr=16000):
    sf.write(path, np.asarray(x, dtype=np.float32), sr, subtype="FLOAT")
    return path


@pytest.mark.parametrize("sr,channels", [(16000, 1), (44100, 2)])
def test_huge_samples_are_a_bad_clip(tmp_path, sr, channels):
    x = np.full((sr // 2, channels) if channels > 1 else sr // 2, 1e30)
    path = _write_float(tmp_path / "loud.wav", x, sr)
    with pytest.raises(AudioError, match=r"samples up to 1e\+30: .*features would not be finite") as e:
        load_audio(path)
    assert e.value.name == str(path) and str(path) in str(e.value)
    with pytest.raises(AudioError, match="features would not be finite"):
        decode_audio(path.read_bytes(), name="loud.wav")
    # Moderate values are fine: real audio within [-1, 1], or a hot but sane float file.
    _write_float(tmp_path / "hot.wav", _tone(16000) * 1e3)
    assert torch.isfinite(load_audio(tmp_path / "hot.wav")).all()


def test_sample_bound_keeps_the_fbank_finite():
    """At the bound, adversarial clips (full-scale noise, Nyquist-rate square waves, steps)
    give finite torchaudio Kaldi fbank features; far above it they do not."""
    import torchaudio.compliance.kaldi as kaldi

    from ssast.audio import max_sample_magnitude

    limit = max_sample_magnitude(16000)
    assert 1e15 < limit < 1e16  # sqrt(3.4e38 / (512 * 400)) / 7.88
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(8000, generator=g) * 2 - 1, torch.tensor([1.0, -1.0]).repeat(4000),
             torch.sign(torch.randn(8000, generator=g)), torch.cat([torch.ones(4000), -torch.ones(4000)])]

    def finite(x):
        x = x.reshape(1, -1)
        f = kaldi.fbank(x - x.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        return bool(torch.isfinite(f).all())

    assert all(finite(c * limit) for c in clips)
    assert not all(finite(c * limit * 100) for c in clips)  # the bound is within two decades of the real edge


# ----------------------------------------------------------------------------- permissions

def _unreadable(path):
    """chmod 000 ``path``; skips the test where that does not stop reading (running as root)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o644)
        pytest.skip("chmod 000 does not stop this user from reading (root)")
    return path


def test_permission_denied_is_named(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, _tone(16000), 16000)
    _unreadable(path)
    try:
        for call in (load_audio, audio_info):
            with pytest.raises(AudioError, match="permission denied") as e:
                call(path)
            assert "System error" not in str(e.value) and str(path) in str(e.value)
    finally:
        path.chmod(0o644)


# ----------------------------------------------------------------------------- partial reads

def test_max_samples_reads_only_what_is_needed(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a16.wav", rng.uniform(-0.5, 0.5, 16000 * 3), 16000, subtype="FLOAT")
    sf.write(tmp_path / "a44.wav", rng.uniform(-0.5, 0.5, 44100 * 3), 44100, subtype="FLOAT")
    requested = []
    real_read = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    n = 16000 + 123
    full = load_audio(tmp_path / "a16.wav")
    part = load_audio(tmp_path / "a16.wav", max_samples=n)
    assert requested[-1] == n and torch.equal(part, full[:n])
    assert torch.equal(load_audio(tmp_path / "a16.wav", max_samples=10 ** 9), full)  # more than there is
    full = load_audio(tmp_path / "a44.wav")
    part = load_audio(tmp_path / "a44.wav", max_samples=n)
    assert part.shape == (n,)
    assert torch.allclose(part, full[:n], atol=1e-5)  # the same resampler windows, up to rounding
    assert requested[-1] < 44100 * 3 / 2  # well under the file: about n * 44100 / 16000 plus a margin
    data = (tmp_path / "a44.wav").read_bytes()
    assert torch.allclose(decode_audio(data, max_samples=n), full[:n], atol=1e-5)


# ----------------------------------------------------------------------------- folder scans

def test_scan_audio_reports_what_it_cannot_use(tmp_path):
    from ssast.audio import scan_audio

    sf.write(tmp_path / "b.wav", _tone(16000), 16000)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    sf.write(tmp_path / "sub" / "a.flac", _tone(16000), 16000)
    sf.write(tmp_path / "sub" / "deeper" / "c.WAV", _tone(16000), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")  # dangling
    (tmp_path / "linked.wav").symlink_to(tmp_path / "b.wav")
    (tmp_path / "x.wav").mkdir()  # a folder named like a clip
    sf.write(tmp_path / "x.wav" / "inner.wav", _tone(16000), 16000)
    files, problems = scan_audio(tmp_path)
    names = [str(p.relative_to(tmp_path)) for p in files]
    assert names == ["b.wav", "linked.wav", "sub/a.flac", "sub/deeper/c.WAV", "x.wav/inner.wav"]
    assert problems == [(str(tmp_path / "gone.wav"), "broken symbolic link"), (str(tmp_path / "x.wav"), "is a directory")]
    top, top_problems = scan_audio(tmp_path, recursive=False)
    assert [p.name for p in top] == ["b.wav", "linked.wav"] and len(top_problems) == 2
    assert scan_audio(tmp_path / "nope") == ([], [(str(tmp_path / "nope"), "no such file")])


def test_folder_inputs_report_what_the_scan_cannot_use(tmp_path):
    """Folders given to predict (and embed) report broken links and folders named like audio files,
    as a missing explicit path is reported, instead of dropping them."""
    from ssast.stream import collect_inputs

    sf.write(tmp_path / "ok.wav", _tone(16000), 16000)
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "x.wav").mkdir()
    files, problems = collect_inputs([tmp_path, tmp_path / "missing.wav"])
    assert [p.rsplit("/", 1)[1] for p in files] == ["ok.wav"]
    assert sorted((p.rsplit("/", 1)[1], why) for p, why in problems) == [
        ("gone.wav", "broken symbolic link"), ("missing.wav", "no such file or folder"), ("x.wav", "is a directory")]


def test_scan_audio_unreadable_folder(tmp_path):
    from ssast.audio import scan_audio

    sf.write(tmp_path / "ok.wav", _tone(16000), 16000)
    locked = tmp_path / "locked"
    locked.mkdir()
    sf.write(locked / "hidden.wav", _tone(16000), 16000)
    _unreadable(locked)
    try:
        files, problems = scan_audio(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [p.name for p in files] == ["ok.wav"] and problems == [(str(locked), "permission denied")]
