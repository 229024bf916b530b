"""The pretraining step: no host reads between log lines, fused Adam inside DeepSpeed, the
precision defaults, and the compiled encoder (same losses, same checkpoint keys)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, tiny_config, tiny_model
from ssast import ASTModel
from ssast.device import compile_encoder
from ssast.engine.config import load_deepspeed_config, precision
from ssast.engine.setup import adam

# A tiny run of the real loop on the DeepSpeed engine, in a process of its own (DeepSpeed joins a
# process group). Every way of reading a tensor's value on the host is counted, step by step: the
# loop calls runlog.advance once per step, with the loss only on the steps that write a log line.
READS_SCRIPT = textwrap.dedent("""
    import json, sys, traceback
    import torch
    from ssast.engine.distributed import setup, teardown
    setup("cpu")
    from ssast import ASTModel, ModelConfig
    from ssast.engine.config import TrainSettings, load_deepspeed_config
    from ssast.engine.loop import TrainState, fit
    from ssast.engine.objective import MaskedPatchObjective
    from ssast.engine.setup import build_engine, dtype_of

    requested, log_every = sys.argv[1], int(sys.argv[2])
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, num_prefix_tokens=2, fshape=4, tshape=4, fstride=4,
                      tstride=4, input_fdim=16, input_tdim=32, model_size="custom", stage="pretrain")
    torch.manual_seed(0)
    model = ASTModel(config=cfg)
    ds = load_deepspeed_config(None, 2, "cpu", requested)
    engine = build_engine(model, model.parameters(), lr=1e-3, weight_decay=5e-7, betas=(0.95, 0.999), ds_config=ds)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)

    NAMES = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "nonzero")
    reads, steps = [], []
    def counted(name, f):
        def g(self, *a, **k):
            reads.append(name + " at " + "; ".join(f"{s.filename}:{s.lineno}" for s in traceback.extract_stack()[-4:-1]))
            return f(self, *a, **k)
        return g
    for n in NAMES:
        setattr(torch.Tensor, n, counted(n, getattr(torch.Tensor, n)))
    torch.nonzero = counted("torch.nonzero", torch.nonzero)

    class Stream:
        def batches(self, step):
            g = torch.Generator().manual_seed(1)
            while True:
                yield {"x": torch.randn(2, 32, 16, generator=g)}

    class Features:
        device = torch.device("cpu")
        def __call__(self, batch):
            return batch["x"].to(dtype_of(ds))

    class Log:
        def info(self, *a): pass
        def scalars(self, *a): pass
        def advance(self, n, **logged):
            steps.append({"logged": bool(logged), "reads": list(reads)})
            reads.clear()

    settings = TrainSettings(max_steps=2 * log_every, valid_every=10**6, save_every=10**6, log_every=log_every)
    fit(engine, MaskedPatchObjective(cfg, mask_patch=10), Stream(), Features(), settings, TrainState(), rank=0,
        runlog=Log(), lr=lambda s: 1e-3)
    print("RESULT " + json.dumps({"steps": steps, "optimizer": type(inner).__module__ + "." + type(inner).__name__,
                                  "fused": inner.defaults.get("fused"), "precision": ds.get("bf16", {})}))
    teardown()
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_no_host_reads_between_log_lines(requested, tmp_path):
    script = tmp_path / "reads.py"
    script.write_text(READS_SCRIPT)
    p = subprocess.run([sys.executable, str(script), requested, "3"], env=_env(), capture_output=True, text=True,
                       timeout=240, check=False)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    # DeepSpeed keeps the torch optimizer it was given, with the fused kernel.
    assert out["optimizer"] == "torch.optim.adam.Adam" and out["fused"] is True
    steps = out["steps"]
    assert [s["logged"] for s in steps] == [False, False, True] * 2
    for i, s in enumerate(steps):
        if not s["logged"]:
            assert s["reads"] == [], f"step {i + 1} read tensors on the host: {s['reads']}"
    assert any(s["reads"] for s in steps if s["logged"])  # the counting sees the log lines' reads


def test_adam_is_fused_for_tensors_and_groups():
    model = tiny_model()
    opt = adam(model.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    assert opt.defaults["fused"] is True
    groups = [{"params": list(model.v.parameters())}, {"params": list(model.cpredlayer.parameters()), "lr": 1.0}]
    assert adam(groups, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999)).defaults["fused"] is True
    # The same update as the default implementation.
    ref = tiny_model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=(0.9, 0.999), foreach=False)
    x = torch.randn(2, 32, 16)
    for m, o in ((model, opt), (ref, ref_opt)):
        _, nce, mse = m(x, "pretrain_joint", mask_patch=10, generator=torch.Generator().manual_seed(0))
        (nce + mse).backward()
        o.step()
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_precision_defaults_and_flag(tmp_path, monkeypatch):
    assert precision(load_deepspeed_config(None, 2, "cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = load_deepspeed_config(None, 2, "cuda")
    assert precision(gpu) == "bf16" and gpu["bf16"]["check_grad_overflow"] is False
    assert precision(load_deepspeed_config(None, 2, "cuda", "fp32")) == "fp32"
    assert precision(load_deepspeed_config(None, 2, "cpu", "bf16")) == "bf16"
    # fp32 on ZeRO 2 without clipping computes no gradient norm (its check reads the norm back).
    assert load_deepspeed_config(None, 2, "cpu")["zero_optimization"]["compute_grad_norm"] is False
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    assert precision(load_deepspeed_config(path, 2, "cpu")) == "bf16"
    assert precision(load_deepspeed_config(path, 2, "cpu", "bf16")) == "bf16"
    with pytest.raises(ValueError, match=r"ds\.json: runs in bf16 but --precision is fp32"):
        load_deepspeed_config(path, 2, "cpu", "fp32")
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}))
    cfg = load_deepspeed_config(path, 2, "cpu", "fp16")
    assert precision(cfg) == "fp16" and "compute_grad_norm" not in cfg["zero_optimization"]
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    assert "compute_grad_norm" not in load_deepspeed_config(path, 2, "cpu")["zero_optimization"]


def test_precision_flag_on_both_training_commands():
    from ssast.cli import build_parser

    parser = build_parser()
    for cmd in (["pretrain", "--train", "x", "--out", "o", "--max-steps", "1"],
                ["finetune", "--train", "x", "--valid", "y", "--out", "o", "--init", "scratch"]):
        a = parser.parse_args(cmd)
        assert a.precision is None and a.compile is False
        a = parser.parse_args(cmd + ["--precision", "bf16", "--compile"])
        assert a.precision == "bf16" and a.compile is True
        with pytest.raises(SystemExit):
            parser.parse_args(cmd + ["--precision", "fp8"])


def test_compiled_encoder_same_loss_and_keys():
    torch._dynamo.reset()
    eager = tiny_model()
    compiled = compile_encoder(tiny_model())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict(), strict=True)
    x = torch.randn(2, 32, 16)
    losses = []
    for m in (eager, compiled):
        m.set_grad_checkpointing(True)
        _, nce, mse = m(x, "pretrain_joint", mask_patch=10, generator=torch.Generator().manual_seed(0))
        loss = nce + 10 * mse
        loss.backward()
        losses.append(loss.detach())
    assert torch.isfinite(losses[1]) and torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    for (k, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5), k
    # One graph for all blocks, compiled by inductor (no silent fallback to eager).
    stats = torch._dynamo.utils.counters["stats"]
    assert stats["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert compile_encoder(eager, enabled=False) is eager and not eager.v.blocks[0]._compiled_call_impl


def test_compile_encoder_refuses_other_modules():
    with pytest.raises(TypeError, match="compile_encoder takes an ASTModel"):
        compile_encoder(torch.nn.Linear(2, 2))
    # A wrapper holding the model as ``module`` (as a DeepSpeed engine does) is accepted.
    model = ASTModel(config=tiny_config())
    wrapper = torch.nn.Module()
    wrapper.module = model
    compile_encoder(wrapper)
    assert model.v.blocks[0]._compiled_call_impl is not None


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_importing_ssast_sets_a_sleeping_openmp_wait_policy(given):
    env = {k: v for k, v in _env().items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, ssast, torch; print(os.environ['OMP_WAIT_POLICY'])"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == (given or "PASSIVE")
