"""benchmarks/pretrain_step.py: the schedules in turns, and the 2021 code's step in a worker process.

The 2021 code itself is not in this repository; a stand-in ``src/models/ast_models.py`` with its
interface (constructor arguments, ``forward(x, task, mask_patch=, cluster=)``, what each task
returns) checks the worker's protocol, its optimizer step and the figures derived from it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "pretrain_step.py"

STAND_IN = textwrap.dedent('''
    import sys
    import time
    import torch
    import torch.nn as nn

    STEPS = []
    FAIL = False


    class ASTModel(nn.Module):
        def __init__(self, label_dim=527, fshape=128, tshape=2, fstride=128, tstride=2, input_fdim=128,
                     input_tdim=1024, model_size="base", pretrain_stage=True, load_pretrained_mdl_path=None):
            super().__init__()
            assert pretrain_stage and model_size == "tiny" and (fshape, tshape) == (16, 16)
            print("pretraining patch split stride: frequency=16, time=16")  # the worker must swallow this
            self.proj = nn.Linear(input_fdim, 4)

        def forward(self, x, task, cluster=True, mask_patch=400):
            assert cluster and mask_patch == 8
            # More than a pipe holds (64 KiB) on stderr in every call: the benchmark must not block it.
            print("a warning " * 10000, file=sys.stderr, flush=True)
            if FAIL:
                raise RuntimeError("the stand-in's step failed on purpose")
            time.sleep(0.05)  # a step that takes at least 0.1 s
            h = self.proj(x)
            if task == "pretrain_mpc":
                return torch.tensor(0.5), h.pow(2).mean()
            assert task == "pretrain_mpg"
            return h.abs().mean()
''')


def run(*args, check=True):
    p = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--batch", "1", "--frames", "64",
                        "--mask-patch", "8", "--threads", "1", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_the_2021_code_is_timed_beside_the_schedules(tmp_path):
    src = tmp_path / "ssast2021"
    (src / "src" / "models").mkdir(parents=True)
    (src / "src" / "models" / "ast_models.py").write_text(STAND_IN)
    out = tmp_path / "steps.json"
    p = run("--steps", "3", "--warmup", "1", "--official", str(src), "--official-timm", "", "--json", str(out))
    res = json.loads(out.read_text())
    assert res["info"]["official"] == str(src) and "take turns" in res["info"]["timing"]
    r = res["results"]["tiny batch 1"]
    assert set(r) == {"two-pass fp32", "single-pass fp32", "single-pass bf16", "2021 code two-pass fp32"}
    official = r["2021 code two-pass fp32"]
    assert official["timm"]  # the worker reports the timm it imported
    assert official["min_seconds"] >= 0.1  # its two forward calls' sleeps are inside the timed step
    for mode in r.values():
        assert mode["min_seconds"] <= mode["seconds_per_step"] <= mode["max_seconds"]
        assert abs(mode["speedup_vs_2021_code"] - official["seconds_per_step"] / mode["seconds_per_step"]) < 1e-9
        two = r["two-pass fp32"]["seconds_per_step"]
        assert abs(mode["speedup_vs_two_pass_fp32"] - two / mode["seconds_per_step"]) < 1e-9
    assert "speed-up over the 2021 code two-pass fp32 step" in p.stdout
    assert "pretraining patch split" not in p.stdout


def test_breakdown_splits_every_schedule_by_the_same_rule(tmp_path):
    src = tmp_path / "ssast2021"
    (src / "src" / "models").mkdir(parents=True)
    (src / "src" / "models" / "ast_models.py").write_text(STAND_IN)
    out = tmp_path / "steps.json"
    p = run("--steps", "1", "--warmup", "0", "--breakdown", "1", "--official", str(src), "--official-timm", "",
            "--json", str(out))
    r = json.loads(out.read_text())["results"]["tiny batch 1"]
    for mode, res in r.items():
        b = res["breakdown"]
        # one profiled step (medians of one): the parts add up to it
        assert abs(b["linear"] + b["attention"] + b["rest"] - b["seconds"]) < 1e-6, mode
        ratio = b["speedup_vs_2021_code"]
        official = r["2021 code two-pass fp32"]["breakdown"]
        for part in ("linear", "attention", "rest"):
            assert b[part] >= 0
            if b[part] == 0:
                assert ratio[part] is None
            else:
                assert abs(ratio[part] * b[part] - official[part]) < 1e-6 * max(1, official[part])
    # Our model's steps have linear layers and attention; the stand-in has one linear layer, and its
    # sleeps (0.1 s a step) are neither.
    for mode in ("two-pass fp32", "single-pass fp32", "single-pass bf16"):
        assert r[mode]["breakdown"]["linear"] > 0 and r[mode]["breakdown"]["attention"] > 0
    official = r["2021 code two-pass fp32"]["breakdown"]
    assert official["linear"] > 0 and official["attention"] == 0 and official["rest"] >= 0.1
    assert "profiled steps, median of 1 each" in p.stdout


def test_a_failing_step_shows_the_workers_errors(tmp_path):
    models = tmp_path / "ssast2021" / "src" / "models"
    models.mkdir(parents=True)
    (models / "ast_models.py").write_text(STAND_IN.replace("FAIL = False", "FAIL = True"))
    p = run("--steps", "1", "--warmup", "0", "--official", str(tmp_path / "ssast2021"), "--official-timm", "",
            check=False)
    assert p.returncode != 0
    assert "the 2021 code's step failed" in p.stderr and "the stand-in's step failed on purpose" in p.stderr


def test_a_folder_without_the_2021_code_is_named(tmp_path):
    p = run("--steps", "1", "--warmup", "0", "--official", str(tmp_path), "--official-timm", "", check=False)
    assert p.returncode != 0
    assert str(tmp_path / "src" / "models" / "ast_models.py") in p.stderr


def test_a_missing_timm_is_explained(tmp_path):
    p = run("--official", str(tmp_path), "--official-timm", str(tmp_path / "nowhere"), check=False)
    assert p.returncode == 2 and "timm 0.4.5" in p.stderr and "install_reference.sh" in p.stderr


RANK = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    import ranked_step

    rank, world, port, _, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    masks = torch.load(out + ".masks")
    steps, model = ranked_step.build_steps("tiny", 4, 64, 8, rank, world, masks)
    steps["single-pass fp32"]()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    dist.destroy_process_group()
''')


def test_ranks_share_one_batch_step(tmp_path, monkeypatch):
    """Two ranks, each with half the clips, reach the gradients of the whole batch's step."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pretrain_step
    from ssast.engine.distributed import _free_port

    # the whole batch's step in this process, with masks fixed for the comparison
    model, opt = pretrain_step.build_model("tiny", 64, "cpu")
    masks = model.make_mask(4, 8, generator=torch.Generator().manual_seed(3))
    x = pretrain_step.example_batch(4, 64, "cpu")
    pretrain_step.make_step(model, opt, x, "single-pass fp32", 8, None, masks)()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in want.values())

    out = tmp_path / "grads.pt"
    torch.save(masks, str(out) + ".masks")
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", port, str(REPO / "benchmarks"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    got = torch.load(out)
    assert set(got) == set(want)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # and the halves alone do not: one rank's own gradient differs from the whole batch's
    half, opt = pretrain_step.build_model("tiny", 64, "cpu")  # the same initial weights
    pretrain_step.make_step(half, opt, x[:2], "single-pass fp32", 8, None, masks[:2])()
    assert not torch.allclose(half.v.blocks[0].attn.qkv.weight.grad, want["v.blocks.0.attn.qkv.weight"],
                              rtol=1e-4, atol=1e-6)


def test_ranked_schedules_are_timed_beside_the_others(tmp_path):
    out = tmp_path / "steps.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--batch", "2", "--frames", "64",
                        "--mask-patch", "8", "--threads", "2", "--steps", "2", "--warmup", "1", "--ranks", "2",
                        "--breakdown", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["info"]["ranks"] == {"processes": 2, "threads_per_rank": 1, "backend": "gloo"}
    r = res["results"]["tiny batch 2"]
    for mode in ("single-pass fp32 2 ranks", "single-pass bf16 2 ranks"):
        assert 0 < r[mode]["min_seconds"] <= r[mode]["seconds_per_step"] <= r[mode]["max_seconds"]
        b = r[mode]["breakdown"]
        assert b["linear"] > 0 and b["attention"] > 0
        assert abs(b["linear"] + b["attention"] + b["rest"] - b["seconds"]) < 1e-6
    assert "single-pass bf16 2 ranks" in p.stdout


def test_ranks_must_split_the_batch():
    p = run("--ranks", "2", check=False)  # batch 1
    assert p.returncode == 2 and "--ranks 2 does not split batch 1" in p.stderr
