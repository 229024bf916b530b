"""Export to transformers' ASTForAudioClassification and back."""
import pytest
import torch

from conftest import load_pt, rel_err, tiny_model
from ssast import load_finetuned

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[test]')")
from ssast.hf import export_hf, import_hf  # noqa: E402


def test_export_matches_our_logits_and_round_trips(tmp_path, fixtures):
    model = load_finetuned(fixtures / "ast_tiny224_f10_t10_t100_label35.pth", input_tdim=100)
    io = load_pt(fixtures / "ast_tiny224_f10_t10_t100_label35_io.pt")
    labels = [f"word{i}" for i in range(35)]
    export_hf(model, tmp_path / "hf", labels=labels)
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label[3] == "word3" and hf.config.max_length == 100
    with torch.no_grad():
        theirs = hf(input_values=io["x"]).logits
        ours = model(io["x"])
    assert rel_err(theirs, ours) < 1e-4
    assert rel_err(theirs, io["logits"]) < 1e-4  # and the official AST output
    # transformers' own feature extractor is configured with our settings
    fe = transformers.ASTFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert fe.num_mel_bins == 128 and fe.max_length == 100 and fe.mean == pytest.approx(-4.2677393)
    back = import_hf(tmp_path / "hf")
    assert back.labels == labels and back.config.grid == model.config.grid
    with torch.no_grad():
        assert rel_err(back(io["x"]), ours) < 1e-6  # same weights; only the head LayerNorm eps differs from transformers


def test_models_transformers_cannot_express_are_refused(tmp_path):
    avgtok = tiny_model(stage="finetune")  # default task ft_avgtok
    with pytest.raises(ValueError, match="ft_avgtok"):
        export_hf(avgtok, tmp_path / "a")
    frame = tiny_model(stage="finetune", fshape=16, tshape=2, fstride=16, tstride=2, default_task="ft_cls")
    with pytest.raises(ValueError, match="square patches"):
        export_hf(frame, tmp_path / "b")
    nokd = tiny_model(stage="finetune", num_prefix_tokens=1, default_task="ft_cls")
    with pytest.raises(ValueError, match="distillation token"):
        export_hf(nokd, tmp_path / "c")
    with pytest.raises(ValueError, match="pretraining-stage"):
        export_hf(tiny_model(), tmp_path / "d", task="ft_cls")
    assert not any(tmp_path.iterdir())


def test_cli_export_hf(tmp_path, fixtures):
    from ssast.cli import main

    out = tmp_path / "hfdir"
    assert main(["export", str(fixtures / "ast_tiny224_f10_t10_t100_label35.pth"), "--format", "hf", "--out", str(out),
                 "--fstride", "10", "--tstride", "10", "--input-tdim", "100"]) == 0
    assert (out / "config.json").exists() and (out / "preprocessor_config.json").exists()
    assert import_hf(out).config.label_dim == 35
