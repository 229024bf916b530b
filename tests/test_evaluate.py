"""``ssast evaluate``: metrics equal compute_metrics on a direct model call over torchaudio's
reference fbank; ensembles, label matching by name, skipped files, the command."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast import ASTModel, ModelConfig, save_checkpoint
from ssast.audio import load_audio
from ssast.cli import main
from ssast.evaluate import evaluate
from ssast.features import FeatureConfig, fbank_reference, pad_or_crop
from ssast.loading import from_model
from ssast.metrics import compute_metrics

SR = 16000
LABELS = ["bird", "frog", "rain"]
FEATURES = FeatureConfig(num_mel_bins=16, target_length=64, mean=-5.0, std=3.0)  # not AudioSet's: must be used


def classifier(seed: int, label_dim: int = 3) -> ASTModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, num_prefix_tokens=2, fshape=4, tshape=4, fstride=4,
                      tstride=4, input_fdim=16, input_tdim=64, label_dim=label_dim, model_size="custom",
                      stage="finetune")
    model = ASTModel(config=cfg)
    with torch.no_grad():
        model.mlp_head[1].weight.mul_(20)  # spread the scores
    return model.eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 classes x 3 clips, shorter and longer than the 0.655 s input, one at 22.05 kHz, one stereo."""
    root = tmp_path_factory.mktemp("data") / "clips"
    rng = np.random.default_rng(0)
    for c, f0 in zip(LABELS, (500, 1500, 3000)):
        (root / c).mkdir(parents=True)
        for k, seconds in enumerate((0.3, 0.66, 1.1)):
            sr = 22050 if (c, k) == ("frog", 2) else SR
            t = np.arange(int(seconds * sr)) / sr
            x = (0.3 * np.sin(2 * np.pi * f0 * (1 + 0.2 * k) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
            if (c, k) == ("rain", 1):
                x = np.stack([x, 0.5 * x], axis=1)
            sf.write(root / c / f"{c}{k}.wav", x, sr)
    return root


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        p = d / f"m{seed}.pt"
        save_checkpoint(classifier(seed), p, labels=LABELS, features=FEATURES.to_dict(), meta={"multilabel": False})
        paths.append(p)
    return paths


def reference_scores(model: ASTModel, paths, multilabel: bool) -> torch.Tensor:
    """Probabilities of a direct model call on fbank_reference + pad + normalize, clip by clip."""
    rows = []
    with torch.no_grad():
        for p in paths:
            fb = pad_or_crop(fbank_reference(load_audio(p, SR), SR, FEATURES.num_mel_bins), FEATURES.target_length)
            x = ((fb - FEATURES.mean) / (2 * FEATURES.std))[None]
            logits = model(x)[0]
            rows.append(logits.sigmoid() if multilabel else logits.softmax(-1))
    return torch.stack(rows).double()


def clip_paths(root):
    return [str(p) for c in LABELS for p in sorted((root / c).glob("*.wav"))]


def targets_of(paths):
    return torch.tensor([LABELS.index(p.split("/")[-2]) for p in paths])


@pytest.mark.parametrize("multilabel", [False, True])
def test_single_model_equals_direct_call(dataset, ckpts, multilabel):
    res = evaluate([ckpts[0]], dataset, device="cpu", multilabel=multilabel, batch_size=4, return_predictions=True)
    paths = clip_paths(dataset)
    assert res["paths"] == paths and res["num_clips"] == 9 and res["labels"] == LABELS
    ref = reference_scores(classifier(0), paths, multilabel)
    np.testing.assert_allclose(res["scores"], ref.numpy(), atol=2e-5)
    want = compute_metrics(ref, targets_of(paths), multilabel)
    for k, v in res["metrics"].items():
        assert v == pytest.approx(want[k], abs=1e-5), k
    assert res["models"][0]["metrics"] == res["metrics"]
    assert res["multilabel"] is multilabel


def test_multilabel_from_checkpoint_meta(dataset, ckpts):
    res = evaluate(ckpts[0], dataset, device="cpu")
    assert res["multilabel"] is False  # the checkpoint's meta says so


def test_ensemble_is_mean_of_probabilities(dataset, ckpts):
    res = evaluate(ckpts, dataset, device="cpu", return_predictions=True)
    paths = clip_paths(dataset)
    refs = [reference_scores(classifier(s), paths, False) for s in (0, 1)]
    ens = (refs[0] + refs[1]) / 2
    np.testing.assert_allclose(res["scores"], ens.numpy(), atol=2e-5)
    want = compute_metrics(ens, targets_of(paths), False)
    assert res["metrics"]["mAP"] == pytest.approx(want["mAP"], abs=1e-5)
    assert res["metrics"]["acc"] == pytest.approx(want["acc"])
    for m, ref in zip(res["models"], refs):
        assert m["metrics"]["mAP"] == pytest.approx(compute_metrics(ref, targets_of(paths), False)["mAP"], abs=1e-5)


def test_labels_matched_by_name(dataset, ckpts, tmp_path):
    # The same model with its outputs in another order gives the same results.
    model = classifier(0)
    perm = [2, 0, 1]
    with torch.no_grad():
        model.mlp_head[1].weight.copy_(model.mlp_head[1].weight[perm])
        model.mlp_head[1].bias.copy_(model.mlp_head[1].bias[perm])
    shuffled = tmp_path / "shuffled.pt"
    save_checkpoint(model, shuffled, labels=[LABELS[i] for i in perm], features=FEATURES.to_dict())
    a = evaluate(ckpts[0], dataset, device="cpu", multilabel=False, return_predictions=True)
    b = evaluate(shuffled, dataset, device="cpu", multilabel=False, return_predictions=True)
    assert b["labels"] == [LABELS[i] for i in perm]
    for k in ("acc", "mAP", "mAUC", "precision", "recall"):
        assert a["metrics"][k] == pytest.approx(b["metrics"][k], abs=1e-6)
    # In an ensemble, columns are aligned by name: the pair's mean equals the model itself.
    both = evaluate([ckpts[0], shuffled], dataset, device="cpu", multilabel=False, return_predictions=True)
    np.testing.assert_allclose(both["scores"], a["scores"], atol=1e-6)


def test_label_mismatch_names_both(dataset, tmp_path):
    p = tmp_path / "other.pt"
    save_checkpoint(classifier(0), p, labels=["bird", "frog", "wind"], features=FEATURES.to_dict())
    with pytest.raises(ValueError, match=r"rain missing.*Data labels: bird, frog, rain.*other.pt: bird, frog, wind"):
        evaluate(p, dataset, device="cpu")


def test_model_with_more_labels(dataset, tmp_path):
    # A model may know labels the data does not use; they score but have no positive clip.
    p = tmp_path / "four.pt"
    save_checkpoint(classifier(0, label_dim=4), p, labels=["wind"] + LABELS, features=FEATURES.to_dict())
    res = evaluate(p, dataset, device="cpu", multilabel=False, return_predictions=True)
    assert res["labels"] == ["wind"] + LABELS and res["targets"][:, 0].sum() == 0
    assert res["metrics"]["num_classes_ap"] == 3


def test_json_datafile_display_names_and_model_object(dataset, tmp_path):
    # Datafile labels are ids (mids); the model's names are display names.
    csv = tmp_path / "class_labels_indices.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},{n}\n" for i, n in enumerate(LABELS)))
    paths = clip_paths(dataset)
    entries = [{"wav": p, "labels": f"/m/{LABELS.index(p.split('/')[-2])}"} for p in paths]
    datafile = tmp_path / "eval.json"
    datafile.write_text(json.dumps({"data": entries}))
    model = classifier(0).train()
    res = evaluate([from_model(model, features=FEATURES, labels=LABELS)], datafile, multilabel=False,
                   return_predictions=True)
    assert res["labels"] == LABELS and model.training  # its mode is restored
    np.testing.assert_allclose(res["scores"], reference_scores(classifier(0), paths, False).numpy(), atol=2e-5)
    # without names, a model is matched by position
    assert evaluate([from_model(model, features=FEATURES)], datafile, multilabel=False)["metrics"] == res["metrics"]


def test_unreadable_clip_skipped(dataset, ckpts, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    (root / "frog" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    res = evaluate(ckpts[0], root, device="cpu")
    assert res["num_clips"] == 9
    assert [s["path"].split("/")[-1] for s in res["skipped"]] == ["broken.wav"]


def test_cli(dataset, ckpts, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["evaluate", str(ckpts[0]), str(ckpts[1]), "--data", str(dataset), "--json", str(out),
               "--device", "cpu", "--no-progress", "--no-multilabel", "--task", "ft_cls"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2" in printed and "m0.pt" in printed
    res = json.loads(out.read_text())
    assert res["task"] == "ft_cls" and len(res["models"]) == 2 and res["num_clips"] == 9
    direct = evaluate(ckpts, dataset, device="cpu", multilabel=False, task="ft_cls")
    assert res["metrics"]["mAP"] == pytest.approx(direct["metrics"]["mAP"])
    assert main(["evaluate", str(ckpts[0]), "--data", str(tmp_path / "missing")]) == 2
