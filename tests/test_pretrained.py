"""AST's supervised initialisations, from local files; the download code is exercised on file:// URLs."""
import shutil

import pytest
import timm
import torch

from conftest import load_pt
from ssast import ASTModel, CheckpointError, download, pretrained


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path))
    # Never reach for the network in tests (huggingface_hub reads HF_HUB_OFFLINE at import).
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_imagenet_init_from_local_deit_weights(weights_dir):
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    sd = deit.state_dict()
    torch.save(sd, weights_dir / "deit_tiny_distilled_patch16_224.pth")
    model = ASTModel(label_dim=10, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=100,
                     model_size="tiny224", pretrain_stage=False, imagenet_pretrain=True)
    v = model.v.state_dict()
    assert torch.equal(v["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    assert torch.equal(v["cls_token"], sd["cls_token"]) and torch.equal(v["dist_token"], sd["dist_token"])
    # RGB patch projection summed into one channel
    assert torch.allclose(v["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    # 14x14 ImageNet grid cut to the 12 x 9 patch grid of 128 bins x 100 frames at stride 10:
    # time centre crop [7-4, 7-4+9), then frequency centre crop [7-6, 7-6+12)
    grid = sd["pos_embed"][0, 2:].reshape(14, 14, -1)
    expect = grid[1:13, 3:12].reshape(108, -1)
    assert torch.equal(v["pos_embed"][0, 2:], expect)
    assert model(torch.randn(2, 100, 128), "ft_cls").shape == (2, 10)


def test_imagenet_init_missing_offline_says_where_to_put_it(weights_dir):
    with pytest.raises(FileNotFoundError) as e:
        ASTModel(label_dim=10, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=100,
                 model_size="tiny", pretrain_stage=False, imagenet_pretrain=True)
    msg = str(e.value)
    assert str(weights_dir / "deit_tiny_distilled_patch16_224.pth") in msg
    assert "deit_tiny_distilled_patch16_224" in msg and "SSAST_PRETRAINED_DIR" in msg


def test_audioset_init_from_local_file(weights_dir, fixtures):
    # The released AST format; the tiny fixture stands in for audioset_10_10_0.4593.pth.
    src = fixtures / "ast_tiny224_f10_t10_t100_label35.pth"
    shutil.copy(src, weights_dir / pretrained.AUDIOSET_FILE)
    model = ASTModel(label_dim=7, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=60,
                     model_size="tiny", pretrain_stage=False, audioset_pretrain=True)
    sd = load_pt(src)
    assert torch.equal(model.v.blocks[0].mlp.fc1.weight, sd["module.v.blocks.0.mlp.fc1.weight"])
    # 12 x 9 grid cut along time to 12 x 5 (60 frames)
    grid = sd["module.v.pos_embed"][0, 2:].reshape(12, 9, -1)
    assert torch.equal(model.v.pos_embed[0, 2:].detach(), grid[:, 2:7].reshape(60, -1))
    assert model.mlp_head[1].out_features == 7  # a new head for the new label set


def test_download_from_url(tmp_path, fixtures):
    src = fixtures / "ast_tiny224_f10_t10_t100_label35.pth"
    dest = download.download(src.as_uri(), tmp_path / "cache" / "file.pth", progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert download.download("file:///nonexistent/never", dest) == dest  # present: no download


def test_download_refuses_a_file_that_is_no_checkpoint(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    dest = tmp_path / "cache" / "file.pth"
    with pytest.raises(CheckpointError, match="file.pth: the downloaded file was refused and removed"):
        download.download(src.as_uri(), dest, progress=False)
    assert not dest.exists() and not dest.with_name("file.pth.part").exists()


def test_download_failure_is_explained(tmp_path):
    dest = tmp_path / "cache" / pretrained.AUDIOSET_FILE
    with pytest.raises(FileNotFoundError) as e:
        download.download((tmp_path / "missing.pth").as_uri(), dest, progress=False)
    msg = str(e.value)
    assert str(dest) in msg and "missing.pth" in msg and "SSAST_PRETRAINED_DIR" in msg and "SSAST_MIRROR" in msg
    assert sorted(p.name for p in dest.parent.iterdir()) == [f".{dest.name}.lock"]  # no partial file left


def test_audioset_init_downloads_through_the_registry(weights_dir, fixtures, monkeypatch):
    # SSAST_MIRROR replaces the release URL; the file is verified against the release (base384,
    # 527 labels), so the tiny 35-label fixture served under its name is refused and removed.
    mirror = weights_dir / "mirror"
    mirror.mkdir()
    shutil.copy(fixtures / "ast_tiny224_f10_t10_t100_label35.pth", mirror / pretrained.AUDIOSET_FILE)
    monkeypatch.setenv("SSAST_MIRROR", mirror.as_uri())
    with pytest.raises(CheckpointError, match="does not match the release audioset_10_10_0.4593: width 192"):
        pretrained.audioset_file()
    assert not (weights_dir / pretrained.AUDIOSET_FILE).exists()
