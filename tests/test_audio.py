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
