import pytest
import torch

from conftest import tiny_model
from ssast import ASTModel, MaskVisualization
from ssast.config import SIZES, ModelConfig


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("patch", [(4, 4), (16, 2)])  # patch-based and frame-based geometry
def test_pretraining_tasks_shapes_and_gradients(prefix, patch):
    f, t = patch
    model = tiny_model(num_prefix_tokens=prefix, fshape=f, tshape=t, fstride=f, tstride=t)
    x = torch.randn(3, 32, 16)
    n = model.config.num_patches
    m = min(6, n - 1)
    acc, nce, mse = model(x, "pretrain_joint", mask_patch=m, cluster=f != 16)
    assert acc.shape == nce.shape == mse.shape == ()
    assert 0 <= acc.item() <= 1 and nce.item() > 0 and mse.item() > 0
    (nce + 10 * mse).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # heads sized fshape*tshape
    assert model.cpredlayer[2].out_features == f * t == model.gpredlayer[2].out_features


@pytest.mark.parametrize("prefix", [1, 2])
def test_finetuning_tasks_shapes_and_gradients(prefix):
    model = tiny_model(stage="finetune", num_prefix_tokens=prefix, fstride=2, tstride=3)
    x = torch.randn(4, 32, 16)
    for task in ("ft_avgtok", "ft_cls"):
        model.zero_grad()
        out = model(x, task)
        assert out.shape == (4, 5)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    assert model.v.pos_embed.shape[1] == prefix + model.config.f_dim * model.config.t_dim


def test_pooling_definitions():
    """ft_avgtok averages the patch tokens, ft_cls the prefix tokens (one for base_nokd)."""
    for prefix in (1, 2):
        model = tiny_model(stage="finetune", num_prefix_tokens=prefix).eval()
        x = torch.randn(2, 32, 16)
        with torch.no_grad():
            h = model.encode(x)
            assert torch.allclose(model(x, "ft_avgtok"), model.mlp_head(h[:, prefix:].mean(1)))
            cls = (h[:, 0] + h[:, 1]) / 2 if prefix == 2 else h[:, 0]
            assert torch.allclose(model(x, "ft_cls"), model.mlp_head(cls), atol=1e-6)


def test_joint_objective_uses_one_encoder_pass_and_matches_separate_tasks():
    model = tiny_model().eval()
    x = torch.randn(2, 32, 16)
    idx = model.make_mask(2, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = model.v.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        acc, nce, mse = model(x, "pretrain_joint", mask_index=idx)
    assert len(calls) == 1
    with torch.no_grad():
        acc2, nce2 = model(x, "pretrain_mpc", mask_index=idx)
        mse2 = model(x, "pretrain_mpg", mask_index=idx)
    hook.remove()
    assert torch.allclose(nce, nce2) and torch.allclose(mse, mse2) and acc == acc2


def test_objectives_equal_a_per_clip_loop():
    """The batched objectives equal the official per-clip formulas (written here as loops)."""
    model = tiny_model().eval()
    x = torch.randn(3, 32, 16)
    idx = model.make_mask(3, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h, target, _ = model.masked_forward(x, idx)
        acc, nce = model(x, "pretrain_mpc", mask_index=idx)
        mse = model(x, "pretrain_mpg", mask_index=idx)
        pred_c, pred_g = model.cpredlayer(h), model.gpredlayer(h)
    m = idx.shape[1]
    ref_nce = ref_correct = 0.0
    for i in range(3):
        total = target[i] @ pred_c[i].T  # (M, M)
        ref_correct += (torch.softmax(total, -1).argmax(0) == torch.arange(m)).sum().item()
        ref_nce += torch.diag(torch.log_softmax(total, -1)).sum().item()
    assert nce.item() == pytest.approx(-ref_nce / (3 * m), rel=1e-6)
    assert acc.item() == pytest.approx(ref_correct / (3 * m))
    assert mse.item() == pytest.approx(((pred_g - target) ** 2).mean().item(), rel=1e-6)


def test_random_masks_use_the_generator():
    model = tiny_model().eval()
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        a = model(x, "pretrain_joint", mask_patch=8, generator=torch.Generator().manual_seed(5))
        b = model(x, "pretrain_joint", mask_patch=8, generator=torch.Generator().manual_seed(5))
        c = model(x, "pretrain_joint", mask_patch=8, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_visualize_mask():
    model = tiny_model().eval()
    x = torch.randn(2, 32, 16)
    idx = model.make_mask(2, 8, generator=torch.Generator().manual_seed(0))
    vis = model(x, "visualize_mask", mask_index=idx)
    assert isinstance(vis, MaskVisualization)
    identified, masked = vis  # unpacks like the 2021 return value
    assert identified.shape == masked.shape == (2, 1, 16, 32)
    spec = x.transpose(1, 2)  # (B, F, T)
    for b in range(2):
        hidden = torch.zeros(4, 8, dtype=torch.bool)
        hidden.view(-1)[idx[b]] = True
        cell = hidden.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (F, T) pixels under masked patches
        assert (masked[b, 0][cell] == 99).all()
        assert torch.equal(masked[b, 0][~cell], spec[b][~cell])
        assert torch.equal(identified[b, 0][~cell], spec[b][~cell])
        assert set(identified[b, 0][cell].unique().tolist()) <= {0.0, 99.0}
    assert vis.correct.shape == (2, 8)


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 32, 16)
    idx = torch.arange(6).expand(2, -1)
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        model.set_grad_checkpointing(ckpt)
        acc, nce, mse = model(x, "pretrain_joint", mask_index=idx)
        (nce + mse).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bf16_autocast_runs():
    model = tiny_model()
    x = torch.randn(2, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        acc, nce, mse = model(x, "pretrain_joint", mask_patch=6)
    assert nce.dtype == torch.float32 and torch.isfinite(nce)
    (nce + mse).backward()


@pytest.mark.parametrize("name,canonical", [
    ("tiny", "tiny"), ("small", "small"), ("base", "base"), ("base_nokd", "base_nokd"),
    ("tiny224", "tiny"), ("small224", "small"), ("base224", "base"), ("base384", "base"),
])
def test_size_names(name, canonical):
    cfg = ModelConfig.from_size(name)
    assert cfg.embed_dim == SIZES[canonical]["embed_dim"]
    assert cfg.num_prefix_tokens == SIZES[canonical]["num_prefix_tokens"]


def test_official_constructor_signature_and_sizes():
    torch.manual_seed(0)
    m = ASTModel(label_dim=35, fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=128, input_tdim=64,
                 model_size="tiny", pretrain_stage=True)
    assert m.v.pos_embed.shape == (1, 2 + 8 * 4, 192)
    assert len(m.v.blocks) == 12
    m = ASTModel(input_tdim=64, model_size="tiny", pretrain_stage=False)  # default frame-based 128x2
    assert m.config.grid == (1, 32)
    assert m(torch.randn(1, 64, 128), "ft_avgtok").shape == (1, 527)


def test_input_and_task_errors():
    with pytest.raises(ValueError, match="stride must equal patch shape"):
        ASTModel(fshape=16, tshape=16, fstride=10, tstride=10, model_size="tiny", pretrain_stage=True)
    with pytest.raises(ValueError, match="unknown model_size"):
        ASTModel(model_size="huge")
    model = tiny_model()
    with pytest.raises(ValueError, match="pretraining stage"):
        model(torch.randn(1, 32, 16), "ft_avgtok")
    with pytest.raises(ValueError, match="unknown task"):
        model(torch.randn(1, 32, 16), "pretrain_xyz")
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 32, 20), "pretrain_mpc", mask_patch=4)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, 64, 16), "pretrain_mpc", mask_patch=4)
    with pytest.raises(ValueError, match="mask_patch"):
        model(torch.randn(1, 32, 16), "pretrain_mpc", mask_patch=33)
    ft = tiny_model(stage="finetune")
    with pytest.raises(ValueError, match="pretrain_stage=True"):
        ft(torch.randn(1, 32, 16), "pretrain_mpc", mask_patch=4)


def test_attention_kernels_agree():
    model = tiny_model().eval()
    x = torch.randn(2, 32, 16)
    idx = torch.arange(6).expand(2, -1)
    outs = []
    for impl in ("fused", "explicit"):
        model.v.set_attention(impl)
        with torch.no_grad():
            outs.append(model(x, "pretrain_joint", mask_index=idx))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*outs))
    model.v.set_attention("auto")
    assert model.v._use_fused_attention(torch.zeros(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not model.v._use_fused_attention(torch.zeros(1))  # training in bf16 on a CPU
        with torch.no_grad():
            assert model.v._use_fused_attention(torch.zeros(1))  # inference
    with pytest.raises(ValueError):
        model.v.set_attention("flash")


@pytest.mark.parametrize("prefix", [1, 2])
def test_cls_head_shortcut_equals_the_full_last_block(prefix):
    """ft_cls skips the patch tokens' part of the last block; logits and gradients are unchanged."""
    model = tiny_model(stage="finetune", num_prefix_tokens=prefix, fstride=2, tstride=3)
    x = torch.randn(3, 32, 16)
    short = model(x, "ft_cls")
    full = model.mlp_head(model.pool(model.encode(x), "ft_cls"))
    assert torch.allclose(short, full, rtol=1e-5, atol=1e-6)
    g_short = torch.autograd.grad(short.square().sum(), list(model.parameters()), allow_unused=True)
    g_full = torch.autograd.grad(full.square().sum(), list(model.parameters()), allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), g_short, g_full):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
