"""Parity with the official 2021 SSAST/AST code, on the reference fixtures (../shared/fixtures)."""
import pytest
import torch

from conftest import load_pt, rel_err
from ssast import ASTModel, load

TOL = 1e-5  # relative, as the issue asks


@pytest.mark.parametrize("name", ["ssast_tiny_patch", "ssast_tiny_frame"])
def test_pretraining_losses_match_official(fixtures, fixture_index, name):
    case = fixture_index[name]
    io = load_pt(fixtures / f"{name}_pretrain_io.pt")
    model = ASTModel(
        fshape=case["fshape"], tshape=case["tshape"], fstride=case["fshape"], tstride=case["tshape"],
        input_tdim=case["pretrain_input_tdim"], model_size="tiny", pretrain_stage=True,
        load_pretrained_mdl_path=fixtures / case["pretrain_checkpoint"],
    ).eval()
    x, mask = io["x"], io["mask_index"]
    assert mask.shape[1] == case["mask_patch"]
    with torch.no_grad():
        acc, nce = model(x, "pretrain_mpc", mask_index=mask)
        mse = model(x, "pretrain_mpg", mask_index=mask)
        j_acc, j_nce, j_mse = model(x, "pretrain_joint", mask_index=mask)
    assert rel_err(nce, io["mpc_nce"]) < TOL
    assert rel_err(mse, io["mpg_mse"]) < TOL
    assert acc.item() == pytest.approx(io["mpc_acc"].item(), abs=1e-7)
    # The single-pass joint objective gives the same numbers under the same mask.
    assert rel_err(j_nce, io["mpc_nce"]) < TOL and rel_err(j_mse, io["mpg_mse"]) < TOL
    assert j_acc.item() == acc.item()


def _finetune_cases():
    return [("ssast_tiny_patch", t) for t in (100, 400, 1024)] + [("ssast_tiny_frame", t) for t in (100, 400)]


@pytest.mark.parametrize("name,tdim", _finetune_cases())
def test_finetuning_outputs_match_official(fixtures, fixture_index, name, tdim):
    case = fixture_index[name]
    assert tdim in case["ft_tdims"]
    ref = load_pt(fixtures / f"{name}_finetune_io.pt")[tdim]
    model = ASTModel(
        label_dim=case["label_dim"], fshape=case["fshape"], tshape=case["tshape"],
        fstride=case["ft_fstride"], tstride=case["ft_tstride"], input_fdim=128, input_tdim=tdim,
        model_size="tiny", pretrain_stage=False, load_pretrained_mdl_path=fixtures / case["pretrain_checkpoint"],
    ).eval()
    # The adapted positional grid and patch projection equal the official ones.
    assert rel_err(model.v.pos_embed.detach(), ref["pos_embed"]) < TOL
    assert rel_err(model.v.patch_embed.proj.weight.detach(), ref["patch_proj_weight"]) < TOL
    model.mlp_head.load_state_dict({k.removeprefix("mlp_head."): v for k, v in ref["mlp_head"].items()})
    with torch.no_grad():
        avgtok = model(ref["x"], "ft_avgtok")
        cls = model(ref["x"], "ft_cls")
    assert avgtok.shape == ref["ft_avgtok"].shape
    assert rel_err(avgtok, ref["ft_avgtok"]) < TOL
    assert rel_err(cls, ref["ft_cls"]) < TOL


def test_ast_model_matches_official(fixtures, fixture_index):
    case = fixture_index["ast_tiny224"]
    io = load_pt(fixtures / "ast_tiny224_f10_t10_t100_label35_io.pt")
    model = load(fixtures / case["checkpoint"], fstride=case["fstride"], tstride=case["tstride"],
                 target_length=case["input_tdim"]).model
    assert model.config.model_size == "tiny" and model.config.label_dim == case["label_dim"]
    with torch.no_grad():
        logits = model(io["x"])
        cls = model(io["x"], "ft_cls")
    assert rel_err(logits, io["logits"]) < TOL
    assert torch.equal(logits, cls)  # an AST model's logits are its ft_cls output


def test_ast_model_via_constructor(fixtures, fixture_index):
    """The AST checkpoint also initialises a fine-tuning model through the SSAST constructor."""
    case = fixture_index["ast_tiny224"]
    io = load_pt(fixtures / "ast_tiny224_f10_t10_t100_label35_io.pt")
    model = ASTModel(label_dim=35, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=100,
                     model_size="tiny224", pretrain_stage=False,
                     load_pretrained_mdl_path=fixtures / case["checkpoint"]).eval()
    sd = load_pt(fixtures / case["checkpoint"])
    model.mlp_head.load_state_dict({k.removeprefix("module.mlp_head."): v for k, v in sd.items() if "mlp_head" in k})
    with torch.no_grad():
        assert rel_err(model(io["x"], "ft_cls"), io["logits"]) < TOL


def test_frequency_crop_where_the_official_code_breaks(fixtures):
    """Fine-tuning on fewer mel bins than pretraining crops the frequency axis of the grid.

    The official code ends that crop at start + t_dim and then fails to reshape; the evident
    intent, a centred crop of f_dim rows, is what happens here.
    """
    src = fixtures / "ssast_tiny_patch_pretrain_t1024.pth"
    model = ASTModel(label_dim=3, fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=64, input_tdim=512,
                     model_size="tiny", pretrain_stage=False, load_pretrained_mdl_path=src)
    pos = load_pt(src)["module.v.pos_embed"]
    grid = pos[0, 2:].reshape(8, 64, -1)  # pretraining grid: 8 frequency x 64 time patches
    expect = grid[2:6, 16:48].reshape(4 * 32, -1)  # centre 4 rows, centre 32 columns
    assert torch.equal(model.v.pos_embed[0, 2:].detach(), expect)
    assert torch.equal(model.v.pos_embed[0, :2].detach(), pos[0, :2])
    assert model(torch.randn(1, 512, 64), "ft_avgtok").shape == (1, 3)
