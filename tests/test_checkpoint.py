import os

import pytest
import torch

from conftest import load_pt, tiny_config, tiny_model
from ssast import ASTModel, CheckpointError, load, read_checkpoint, save_checkpoint, save_released
from ssast.loading import init_from, read


def _joint(model, x, idx):
    with torch.no_grad():
        return model(x, "pretrain_joint", mask_index=idx)


# ----------------------------------------------------------------------------- round trips
def test_project_format_round_trip_pretraining(tmp_path):
    model = tiny_model().eval()
    path = tmp_path / "pre.pt"
    save_checkpoint(model, path, features={"sample_rate": 16000}, meta={"step": 7})
    ckpt = read_checkpoint(path)
    assert ckpt.format == "ssast" and ckpt.config == model.config and ckpt.meta == {"step": 7}
    again = load(path)
    x, idx = torch.randn(2, 32, 16), torch.arange(5).expand(2, -1)
    assert all(torch.equal(a, b) for a, b in zip(_joint(model, x, idx), _joint(again.model, x, idx)))
    assert again.features.sample_rate == 16000 and again.features.num_mel_bins == 16
    assert again.stage == "pretrain" and again.meta == {"step": 7}


def test_continue_pretraining_from_a_checkpoint(tmp_path):
    """pretrain_stage=True with load_pretrained_mdl_path continues from the file's weights."""
    model = tiny_model()
    save_released(model, tmp_path / "r.pth")
    # The tiny test geometry is no preset size, so build from the same config and load.
    cont = ASTModel(config=model.config)
    init_from(cont, read(tmp_path / "r.pth"))
    for (k, a), (k2, b) in zip(model.state_dict().items(), cont.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_continue_pretraining_with_the_official_constructor(fixtures, tmp_path):
    src = fixtures / "ssast_tiny_patch_pretrain_t1024.pth"
    model = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, model_size="tiny",
                     pretrain_stage=True, load_pretrained_mdl_path=src)
    sd = load_pt(src)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[f"module.{k}"]), k
    # A shorter pretraining input crops the positional grid instead of failing.
    short = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, input_tdim=512, model_size="tiny",
                     pretrain_stage=True, load_pretrained_mdl_path=src)
    assert short.v.pos_embed.shape == (1, 2 + 8 * 32, 192)


def test_released_writer_reproduces_the_released_layout(fixtures, tmp_path):
    src = fixtures / "ssast_tiny_patch_pretrain_t1024.pth"
    model = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, model_size="tiny", load_pretrained_mdl_path=src)
    out = tmp_path / "again.pth"
    save_released(model, out)
    ref, mine = load_pt(src), load_pt(out)
    assert set(ref) == set(mine)
    for k, v in ref.items():
        assert mine[k].shape == v.shape and mine[k].dtype == v.dtype, k
        if ".head" not in k:  # timm's unused ImageNet heads are written as zeros
            assert torch.equal(mine[k], v), k


def test_finetuned_round_trips(tmp_path):
    model = tiny_model(stage="finetune", fstride=2, tstride=2, default_task="ft_cls").eval()
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        ref = model(x, "ft_cls")
    save_checkpoint(model, tmp_path / "ft.pt", labels=list("abcde"), features={"num_mel_bins": 16})
    m2 = load(tmp_path / "ft.pt")
    assert m2.labels == list("abcde") and m2.task == "ft_cls" and not m2.model.training and m2.has_head
    with torch.no_grad():
        assert torch.equal(m2.model(x), ref)
    save_released(model, tmp_path / "ft.pth")
    sd = load_pt(tmp_path / "ft.pth")
    assert all(k.startswith("module.") for k in sd) and "module.mlp_head.1.weight" in sd
    assert "module.p_input_fdim" not in sd
    # Released fine-tuned files carry no geometry: it is passed as arguments.
    m3 = ASTModel(config=tiny_config(stage="finetune", fstride=2, tstride=2))
    init_from(m3, read(tmp_path / "ft.pth", fstride=2, tstride=2, num_mel_bins=16), keep_head=True)
    with torch.no_grad():
        assert torch.equal(m3.eval()(x, "ft_cls"), ref)


def test_load_adapts_the_time_grid(fixtures):
    loaded = load(fixtures / "ast_tiny224_f10_t10_t100_label35.pth", target_length=300)
    assert loaded.config.grid == (12, 29) and loaded.features.target_length == 300
    assert loaded.model(torch.randn(1, 300, 128)).shape == (1, 35)


def test_cli_info_and_export(fixtures, tmp_path, capsys):
    from ssast.cli import main

    assert main(["info", str(fixtures / "ssast_tiny_frame_pretrain_t1024.pth")]) == 0
    out = capsys.readouterr().out
    assert "128x2" in out and "tiny" in out and "pretrain" in out
    dst = tmp_path / "frame.pt"
    assert main(["export", str(fixtures / "ssast_tiny_frame_pretrain_t1024.pth"), "--format", "ssast", "--out", str(dst)]) == 0
    assert read_checkpoint(dst).config.grid == (1, 512)
    back = tmp_path / "frame.pth"
    assert main(["export", str(dst), "--format", "released", "--out", str(back)]) == 0
    a, b = load_pt(fixtures / "ssast_tiny_frame_pretrain_t1024.pth"), load_pt(back)
    assert all(torch.equal(a[k], b[k]) for k in a if ".head" not in k)
    assert main(["info", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err


# ----------------------------------------------------------------------------- failure paths
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SSAST_TEST_MARKER']}",))


def test_refuses_pickles_that_run_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SSAST_TEST_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"module.v.patch_embed.proj.weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle") as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01garbage bytes", "not a PyTorch checkpoint"),
    (b"hello, this is text\n", "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ASTModel(model_size="tiny", pretrain_stage=False, load_pretrained_mdl_path=tmp_path / "nope.pth")


@pytest.mark.parametrize("obj,match", [
    (torch.zeros(3), "holds a Tensor"),
    ({"epoch": 3, "lr": 0.1}, "expected a state dict of tensors"),
    ({"module.encoder.weight": torch.zeros(2)}, "no patch projection"),
    ({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, "no patch projection"),
    ({"v.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, "3 input channels"),
])
def test_wrong_contents(tmp_path, obj, match):
    path = tmp_path / "wrong.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_patch_shape_mismatch(fixtures):
    with pytest.raises(CheckpointError, match="patch shape mismatch") as e:
        ASTModel(fshape=128, tshape=2, fstride=128, tstride=1, model_size="tiny", pretrain_stage=False,
                 load_pretrained_mdl_path=fixtures / "ssast_tiny_patch_pretrain_t1024.pth")
    assert "ssast_tiny_patch_pretrain_t1024.pth" in str(e.value)


def test_model_size_mismatch(fixtures):
    with pytest.raises(CheckpointError, match="model size mismatch.*'tiny'.*'small'"):
        ASTModel(fshape=16, tshape=16, fstride=10, tstride=10, model_size="small", pretrain_stage=False,
                 load_pretrained_mdl_path=fixtures / "ssast_tiny_patch_pretrain_t1024.pth")
    with pytest.raises(CheckpointError, match="model size mismatch"):
        ASTModel(fshape=16, tshape=16, fstride=10, tstride=10, model_size="base_nokd", pretrain_stage=False,
                 load_pretrained_mdl_path=fixtures / "ssast_tiny_patch_pretrain_t1024.pth")


def _edited_release(tmp_path, edit):
    model = tiny_model()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd["module.p_input_fdim"], sd["module.p_input_tdim"] = torch.tensor(16), torch.tensor(32)
    edit(sd)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    return model.config, path


def test_missing_keys(tmp_path):
    cfg, path = _edited_release(tmp_path, lambda sd: sd.pop("module.v.blocks.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys: v\.blocks\.1\.mlp\.fc2\.bias") as e:
        init_from(ASTModel(config=cfg), read(path))
    assert "edited.pth" in str(e.value)
    cfg, path = _edited_release(tmp_path, lambda sd: sd.pop("module.cpredlayer.2.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: cpredlayer\.2\.weight"):
        init_from(ASTModel(config=cfg), read(path))


def test_unexpected_keys(tmp_path):
    cfg, path = _edited_release(tmp_path, lambda sd: sd.__setitem__("module.v.blocks.0.attn.extra", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: v\.blocks\.0\.attn\.extra"):
        init_from(ASTModel(config=cfg), read(path))
    cfg, path = _edited_release(tmp_path, lambda sd: sd.__setitem__("module.decoder.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.weight"):
        init_from(ASTModel(config=cfg), read(path))


def test_tensor_shape_mismatch(tmp_path):
    cfg, path = _edited_release(tmp_path, lambda sd: sd.__setitem__("module.mask_embed", torch.zeros(1, 1, 7)))
    with pytest.raises(CheckpointError, match="shape mismatch: mask_embed"):
        init_from(ASTModel(config=cfg), read(path))


def test_stage_errors(fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="not a fine-tuned model"):
        load(fixtures / "ssast_tiny_patch_pretrain_t1024.pth", stage="finetune").require_classifier()
    with pytest.raises(CheckpointError, match="needs a pretraining checkpoint"):
        ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, input_tdim=100, model_size="tiny",
                 pretrain_stage=True, load_pretrained_mdl_path=fixtures / "ast_tiny224_f10_t10_t100_label35.pth")


def test_inconsistent_positional_grid(fixtures):
    # 108 patch positions are 12 x 9 with stride 10, but no whole grid with stride 16 (8 rows).
    with pytest.raises(CheckpointError, match="no whole number of time steps"):
        load(fixtures / "ast_tiny224_f10_t10_t100_label35.pth", fstride=16, tstride=16)


def test_unsupported_project_version(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    obj["version"] = 99
    torch.save(obj, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(tmp_path / "b.pt")
