"""ONNX export: ONNX Runtime's logits against ours, for the spectrogram and the waveform variant."""
import math

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from conftest import rel_err, tiny_model
from ssast.features import FeatureConfig, FeatureExtractor, num_frames, pad_or_crop
from ssast.loading import from_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the exporter's translation library

from ssast.onnx import WaveformFeatures, export_onnx, read_metadata  # noqa: E402

LABELS = ["dog", "rain", "crying baby", "door knock", "helicopter"]
# Not AudioSet's statistics, so that a file carrying the defaults instead would be caught.
FEATURES = FeatureConfig(num_mel_bins=16, target_length=32, mean=-6.8, std=5.5)
SPAN = (32 - 1) * 160 + 400  # samples that fill exactly the model's 32 frames at 16 kHz


def finetuned(task: str):
    model = tiny_model(stage="finetune", fstride=2, tstride=2, default_task=task).eval()
    return from_model(model, features=FEATURES, labels=LABELS, multilabel=True)


def clips(batch: int, samples: int, seed: int) -> torch.Tensor:
    """(batch, samples) noise with a tone on top, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * torch.randint(200, 4000, (batch, 1), generator=g) * t)
    return (tone + 0.05 * torch.randn(batch, samples, generator=g)).clamp(-1, 1)


def kaldi_reference(wave: torch.Tensor, c: FeatureConfig) -> torch.Tensor:
    """torchaudio's Kaldi fbank of each clip (the recipe's call), padded or cropped and normalized."""
    feats = [kaldi.fbank(w[None] - w.mean(), htk_compat=True, sample_frequency=c.sample_rate, use_energy=False,
                         window_type=c.window, num_mel_bins=c.num_mel_bins, dither=0.0,
                         frame_length=c.frame_length_ms, frame_shift=c.frame_shift_ms) for w in wave]
    return (torch.stack([pad_or_crop(f, c.target_length) for f in feats]) - c.mean) / (2 * c.std)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=["ft_avgtok", "ft_cls"])
def spectrogram_export(request, tmp_path_factory):
    loaded = finetuned(request.param)
    path = export_onnx(loaded, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return loaded.model, path


@pytest.fixture(scope="module")
def waveform_export(tmp_path_factory):
    loaded = finetuned("ft_cls")
    path = export_onnx(loaded, tmp_path_factory.mktemp("onnx") / "waveform.onnx", with_features=True)
    return loaded.model, path


@pytest.mark.parametrize("batch", [1, 3])
def test_spectrogram_variant_matches_pytorch(spectrogram_export, batch):
    model, path = spectrogram_export
    sess = session(path)
    (inp,) = sess.get_inputs()
    assert inp.name == "spectrogram" and isinstance(inp.shape[0], str) and inp.shape[1:] == [32, 16]
    x = torch.randn(batch, 32, 16, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x)
    (out,) = sess.run(None, {"spectrogram": x.numpy()})
    assert out.shape == (batch, 5)
    assert rel_err(torch.from_numpy(out), ref) <= 1e-4


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("samples", [2000, SPAN, 9000], ids=["shorter", "exact", "longer"])
def test_waveform_variant_matches_extractor_and_model(waveform_export, batch, samples):
    model, path = waveform_export
    sess = session(path)
    (inp,) = sess.get_inputs()
    assert inp.name == "waveform" and all(isinstance(d, str) for d in inp.shape)
    wave = clips(batch, samples, seed=samples + batch)
    with torch.no_grad():
        ref = model(FeatureExtractor(FEATURES)(wave))
    (out,) = sess.run(None, {"waveform": wave.numpy()})
    assert out.shape == (batch, 5)
    assert rel_err(torch.from_numpy(out), ref) <= 1e-4


def test_waveform_shorter_than_a_frame_gives_padding(waveform_export):
    model, path = waveform_export
    (out,) = session(path).run(None, {"waveform": clips(2, 100, seed=0).numpy()})
    padding = torch.full((2, 32, 16), -FEATURES.mean / (2 * FEATURES.std))  # a normalized zero fbank
    with torch.no_grad():
        ref = model(padding)
    assert rel_err(torch.from_numpy(out), ref) <= 1e-4


@pytest.mark.parametrize("config", [
    FEATURES,
    FeatureConfig(sample_rate=8000, num_mel_bins=23, window="povey", target_length=50, mean=-3.0, std=4.0),
    FeatureConfig(sample_rate=22050, num_mel_bins=40, window="hamming", frame_shift_ms=12.5, target_length=20),
], ids=["16k-hanning", "8k-povey", "22k-hamming"])
def test_waveform_features_match_extractor_and_torchaudio(config):
    front = WaveformFeatures(config)
    size = int(config.sample_rate * config.frame_length_ms / 1000)
    for samples in (front.span // 3, front.span, front.span * 2 + 7):
        wave = clips(2, samples, seed=samples)
        ours = front(wave)
        assert num_frames(front.span, config.sample_rate, config.frame_length_ms,
                          config.frame_shift_ms) == config.target_length
        assert ours.shape == (2, config.target_length, config.num_mel_bins)
        assert rel_err(ours, FeatureExtractor(config)(wave)) <= 1e-6
        if samples >= size:  # the golden values
            assert rel_err(ours, kaldi_reference(wave, config)) <= 1e-4


def test_metadata_tells_what_the_outputs_mean(spectrogram_export, waveform_export):
    for (model, path), kind in ((spectrogram_export, "spectrogram"), (waveform_export, "waveform")):
        props = session(path).get_modelmeta().custom_metadata_map  # what a device reads
        meta = read_metadata(path)
        assert set(meta) == set(props)
        assert meta["labels"] == LABELS
        assert meta["features"] == FEATURES.to_dict()
        assert meta["task"] == model.config.default_task
        assert meta["input"] == kind
        assert meta["activation"] == "sigmoid" and meta["activation_source"] == "checkpoint"
        assert meta["model"] == model.config.to_dict()


def test_refuses_pretraining_model(tmp_path):
    with pytest.raises(ValueError, match="pretraining-stage model.*no classification head"):
        export_onnx(from_model(tiny_model(stage="pretrain")), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_refuses_bad_arguments(tmp_path):
    model = finetuned("ft_avgtok")
    with pytest.raises(ValueError, match="opset must be at least 18"):
        export_onnx(model, tmp_path / "x.onnx", opset=17)
    with pytest.raises(ValueError, match="task must be one of"):
        export_onnx(model, tmp_path / "x.onnx", task="pretrain_mpc")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export(tmp_path):
    from ssast import save_checkpoint
    from ssast.cli import main

    model = tiny_model(stage="finetune", fstride=2, tstride=2, default_task="ft_cls").eval()
    save_checkpoint(model, tmp_path / "m.pt", labels=LABELS, features=FEATURES.to_dict(), meta={"multilabel": False})
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "m.pt"), "--format", "onnx", "--with-features", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["input"] == "waveform" and meta["labels"] == LABELS and meta["activation"] == "softmax"
    wave = clips(3, SPAN, seed=5)
    (logits,) = session(out).run(None, {"waveform": wave.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(logits), model(FeatureExtractor(FEATURES)(wave))) <= 1e-4
