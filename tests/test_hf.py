"""Export to transformers' ASTForAudioClassification, and exported folders as models everywhere."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import load_pt, rel_err, tiny_model
from ssast import load
from ssast.cli import main
from ssast.loading import from_model

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[test]')")
from ssast.hf import export_hf  # noqa: E402

AST = "ast_tiny224_f10_t10_t100_label35.pth"


def test_export_matches_our_logits_and_round_trips(tmp_path, fixtures):
    loaded = load(fixtures / AST, target_length=100)
    io = load_pt(fixtures / "ast_tiny224_f10_t10_t100_label35_io.pt")
    loaded.labels = [f"word{i}" for i in range(35)]
    export_hf(loaded, tmp_path / "hf")
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label[3] == "word3" and hf.config.max_length == 100
    # 35 outputs: the Speech Commands recipe's single-label setup, which the export records
    assert hf.config.problem_type == "single_label_classification"
    with torch.no_grad():
        theirs = hf(input_values=io["x"]).logits
        ours = loaded.model(io["x"])
    assert rel_err(theirs, ours) < 1e-4
    assert rel_err(theirs, io["logits"]) < 1e-4  # and the official AST output
    # transformers' own feature extractor is configured with our settings
    fe = transformers.ASTFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert fe.num_mel_bins == 128 and fe.max_length == 100 and fe.mean == pytest.approx(-6.845978)
    back = load(tmp_path / "hf")
    assert back.format == "hf" and back.labels == loaded.labels and back.config.grid == loaded.config.grid
    assert back.features == loaded.features and back.multilabel is False
    with torch.no_grad():
        assert rel_err(back.model(io["x"]), ours) < 1e-6  # same weights; only the head LayerNorm eps differs


def test_multilabel_models_export_and_come_back_multilabel(tmp_path):
    model = tiny_model(stage="finetune", default_task="ft_cls")
    export_hf(from_model(model, multilabel=True), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification"
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf")
    assert hf.config.problem_type == "multi_label_classification"
    assert load(tmp_path / "hf").multilabel is True


def test_models_transformers_cannot_express_are_refused(tmp_path):
    avgtok = tiny_model(stage="finetune")  # default task ft_avgtok
    with pytest.raises(ValueError, match="ft_avgtok.*--task ft_cls"):
        export_hf(from_model(avgtok), tmp_path / "a")
    frame = tiny_model(stage="finetune", fshape=16, tshape=2, fstride=16, tstride=2, default_task="ft_cls")
    with pytest.raises(ValueError, match="square patches"):
        export_hf(from_model(frame), tmp_path / "b")
    nokd = tiny_model(stage="finetune", num_prefix_tokens=1, default_task="ft_cls")
    with pytest.raises(ValueError, match="distillation token"):
        export_hf(from_model(nokd), tmp_path / "c")
    with pytest.raises(ValueError, match="pretraining-stage model.*fine-tune it first.*--format released"):
        export_hf(from_model(tiny_model()), tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_exported_folder_works_in_every_command(tmp_path, fixtures, capsys):
    """A released fine-tuned file exported as a Hugging Face folder, then that folder as the
    model of info, predict, evaluate and export, as a user would run them."""
    hf_dir = tmp_path / "hfdir"
    # The released file stores no geometry: its own (100 frames) is given once, at the export.
    assert main(["export", str(fixtures / AST), "--format", "hf", "--out", str(hf_dir), "--target-length", "100"]) == 0
    assert json.loads((hf_dir / "config.json").read_text())["max_length"] == 100
    capsys.readouterr()

    assert main(["info", str(hf_dir)]) == 0
    out = capsys.readouterr().out
    assert "format:      hf" in out and "100 frames" in out and "labels:      35" in out

    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    for name in ("backward", "five"):  # the Speech Commands names its 35 outputs get
        (clips / name).mkdir(parents=True)
        sf.write(clips / name / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    pred = tmp_path / "pred.json"
    assert main(["predict", str(hf_dir), str(clips), "--out", str(pred), "--no-progress", "--device", "cpu"]) == 0
    result = json.loads(pred.read_text())
    assert len(result["files"]) == 2 and result["settings"]["features"]["target_length"] == 100
    assert main(["evaluate", str(hf_dir), "--data", str(clips), "--no-progress", "--device", "cpu"]) == 0
    assert "2 clips, 35 labels" in capsys.readouterr().out

    again = tmp_path / "again.pt"
    assert main(["export", str(hf_dir), "--format", "ssast", "--out", str(again)]) == 0
    ref, back = load(hf_dir), load(again)
    assert back.config == ref.config and back.features == ref.features
    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        assert torch.equal(back.model(x), ref.model(x))


@pytest.mark.parametrize("multilabel", [True, False])
def test_transformers_pipeline_agrees_with_ssast_predict(tmp_path, multilabel):
    """transformers' audio-classification pipeline on an exported folder gives the labels and scores
    ssast predict gives on the same audio (sigmoid for multi-label models, softmax otherwise)."""
    import math

    import numpy as np

    from ssast.config import ModelConfig
    from ssast.features import FeatureConfig
    from ssast.model import ASTModel
    from ssast.predict import Predictor, predict

    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=2, fshape=16, tshape=16, fstride=10, tstride=10,
                      input_fdim=128, input_tdim=100, label_dim=6, model_size="custom", stage="finetune",
                      default_task="ft_cls")
    model = ASTModel(config=cfg).eval()
    with torch.no_grad():
        model.mlp_head[1].weight.mul_(30)  # spread the scores
    names = ["Speech", "Dog", "_silence_", "Bird, song", "Rain", "Car"]
    features = FeatureConfig(target_length=100, mean=-6.1, std=5.2)
    export_hf(from_model(model, features=features, labels=names, multilabel=multilabel), tmp_path / "hf")

    t = np.arange(16000) / 16000
    wave = (0.2 * np.sin(2 * math.pi * 440 * t) * (t > 0.3) + 0.02 * np.random.default_rng(0).standard_normal(t.size))
    wave = wave.astype(np.float32)
    pipe = transformers.pipeline("audio-classification", model=str(tmp_path / "hf"), device="cpu")
    theirs = pipe({"raw": wave, "sampling_rate": 16000}, top_k=3)

    import soundfile as sf

    sf.write(tmp_path / "clip.wav", wave, 16000, subtype="FLOAT")
    predictor = Predictor(load(tmp_path / "hf"), device="cpu")
    assert predictor.activation == ("sigmoid" if multilabel else "softmax")
    (ours,) = predict(predictor, [tmp_path / "clip.wav"], window=1.0, top_k=3, progress=False).files
    assert len(ours.starts) == 1  # one window: the clip
    assert [t["label"] for t in theirs] == [names[i] for i in ours.top_index[0]]
    np.testing.assert_allclose([t["score"] for t in theirs], ours.top_score[0], rtol=1e-3, atol=1e-5)
