"""Pretraining engine: schedule, plateau, DeepSpeed config, objectives, and real runs.

The runs are real ``ssast pretrain`` processes on generated shards with a two-block, 32-wide
model on 16 mel bins x 32 frames: two processes under ``torchrun`` (gloo, ZeRO stage 2,
gradient accumulation 2), killed with SIGKILL and resumed; and one process with the two-pass
objective, started without a launcher.
"""
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_config
from ssast import ASTModel, load, read_checkpoint
from ssast.engine.checkpointing import MARKER, complete_tags, export_source, tag_name
from ssast.engine.config import load_deepspeed_config
from ssast.engine.objective import MaskedPatchObjective
from ssast.engine.schedule import Plateau, PlateauSchedule, learning_rate

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = ["--model-config", "MODEL", "--fshape", "4", "--tshape", "4", "--target-length", "32", "--num-mel-bins", "16",
            "--mask-patch", "8"]


# ----------------------------------------------------------------------------- schedule

def test_learning_rate_warmup_and_scale():
    lrs = [learning_rate(s, 1e-4, 1000) for s in range(1200)]
    assert lrs[0] == pytest.approx(1e-7)  # the first update already moves
    assert lrs[499] == pytest.approx(0.5e-4)
    assert lrs[999] == pytest.approx(1e-4) and lrs[1000] == lrs[1199] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(lrs[:999], lrs[1:1000]))  # rises every step of the warm-up
    assert learning_rate(5000, 1e-4, 1000, scale=0.25) == pytest.approx(2.5e-5)
    assert learning_rate(10, 1e-4, 1000, scale=0.5) == pytest.approx(0.5 * 11e-7)
    assert learning_rate(0, 3e-4, 0) == pytest.approx(3e-4)
    with pytest.raises(ValueError):
        learning_rate(-1, 1e-4, 10)


@pytest.mark.parametrize("mode,values", [
    ("max", [0.10, 0.20, 0.19, 0.20, 0.20002, 0.18, 0.25, 0.25, 0.24, 0.24, 0.30, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("min", [1.0, 0.9, 0.95, 0.9, 0.89995, 0.91, 0.5, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4, 0.41, 0.3, 0.3, 0.3]),
])
def test_plateau_halving_matches_torch(mode, values):
    """The plateau state follows torch's ReduceLROnPlateau (the 2021 recipe's scheduler) exactly."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2)
    p = Plateau(mode=mode, patience=2, factor=0.5)
    scales = []
    for v in values:
        ref.step(v)
        p = p.update(v)
        assert p.scale == opt.param_groups[0]["lr"], f"after {v}: ours {p.scale}, torch {opt.param_groups[0]['lr']}"
        scales.append(p.scale)
    assert min(scales) < 1.0  # the sequences do trigger halvings
    assert Plateau.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_plateau_rejects_bad_settings():
    with pytest.raises(ValueError):
        Plateau(mode="up")
    with pytest.raises(ValueError):
        Plateau(factor=1.5)


# ----------------------------------------------------------------------------- DeepSpeed JSON

def test_plateau_schedule_is_the_rate_of_each_step():
    """Pretraining's schedule: warm-up, then the plateau's scale, which only validations change."""
    sched = PlateauSchedule(1e-3, 10, Plateau(mode="max", patience=1))
    assert sched(0) == pytest.approx(1e-4) and sched(50) == pytest.approx(1e-3)
    assert [sched.observe(v) for v in (0.5, 0.4, 0.4, 0.6, 0.5)] == [False, False, True, False, False]
    assert sched(50) == pytest.approx(0.5e-3) and sched.plateau.reductions == 1


def test_deepspeed_config(tmp_path):
    cfg = load_deepspeed_config(None, 6, "cpu")
    assert cfg["train_micro_batch_size_per_gpu"] == 6 and cfg["zero_optimization"]["stage"] == 2
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 8}))
    assert load_deepspeed_config(path, None, "cpu")["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(ValueError, match="ds.json.*--batch-size"):
        load_deepspeed_config(path, 4, "cpu")
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="ds.json.*'optimizer'.*engine settings only"):
        load_deepspeed_config(path, 4, "cpu")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="ds.json"):
        load_deepspeed_config(path, 4, "cpu")
    for f in sorted((REPO / "pretrain").glob("*.json")):  # the shipped configs are engine settings only
        cfg = load_deepspeed_config(f, 4, "cpu")
        assert cfg["train_micro_batch_size_per_gpu"] == 4, f


# ----------------------------------------------------------------------------- objectives

def test_objectives_one_and_two_passes():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = ASTModel(config=cfg)
    x = torch.randn(3, cfg.input_tdim, cfg.input_fdim)

    one = MaskedPatchObjective(cfg, "joint", mask_patch=6, cluster=True, mpg_weight=10.0)
    loss, m = one.train_step(model, x, {}, torch.Generator().manual_seed(5))
    acc, nce, mse = model(x, "pretrain_joint", cluster=True, mask_patch=6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(loss, nce + 10 * mse) and torch.equal(m["acc"], acc)

    two = MaskedPatchObjective(cfg, "joint", mask_patch=6, cluster=True, two_pass=True, mpg_weight=10.0)
    loss2, m2 = two.train_step(model, x, {}, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    mask_a = model.make_mask(3, 6, cluster=True, generator=g)
    mask_b = model.make_mask(3, 6, cluster=True, generator=g)
    assert not torch.equal(mask_a, mask_b)  # the second pass has its own mask
    _, nce_a = model(x, "pretrain_mpc", mask_index=mask_a)
    mse_b = model(x, "pretrain_mpg", mask_index=mask_b)
    assert torch.allclose(loss2, nce_a + 10 * mse_b)
    assert not torch.allclose(m2["mse"], mse)  # not the one-pass value

    mpg = MaskedPatchObjective(cfg, "mpg", mask_patch=6)
    assert (mpg.metric, mpg.mode) == ("mse", "min") and set(mpg.train_step(model, x, {}, None)[1]) == {"loss", "mse"}
    with pytest.raises(ValueError, match="two-pass"):
        MaskedPatchObjective(cfg, "mpc", two_pass=True)
    with pytest.raises(ValueError, match="mask-patch"):
        MaskedPatchObjective(cfg, "joint", mask_patch=cfg.num_patches + 1)


def test_validation_masks_are_fixed_per_clip():
    cfg = tiny_config()
    obj = MaskedPatchObjective(cfg, "joint", mask_patch=6, seed=3)
    a = obj.fixed_masks({"path": ["x.wav", "y.wav"]}, "cpu")
    b = obj.fixed_masks({"path": ["y.wav", "z.wav", "x.wav"]}, "cpu")
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert a.shape == (2, 6) and all(len(set(r.tolist())) == 6 for r in a)
    assert not torch.equal(MaskedPatchObjective(cfg, "joint", mask_patch=6, seed=4).fixed_masks({"path": ["x.wav"]}, "cpu")[0], a[0])


# ----------------------------------------------------------------------------- checkpoint tags

def test_complete_tags_and_export_source(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints"
    for step, complete in ((3, True), (6, True), (9, False)):
        d = ck / tag_name(step)
        d.mkdir(parents=True)
        (d / "ssast.pt").write_bytes(b"x")
        if complete:
            (d / MARKER).write_text(json.dumps({"step": step}))
    (ck / "latest").write_text(tag_name(9))  # a pointer to the broken tag is ignored
    assert [s for s, _ in complete_tags(ck)] == [3, 6]
    assert export_source(run) == str(ck / tag_name(6) / "ssast.pt")
    assert export_source(ck) == str(ck / tag_name(6) / "ssast.pt")
    assert export_source(ck / tag_name(3)) == str(ck / tag_name(3) / "ssast.pt")
    with pytest.raises(FileNotFoundError, match="global_step9.*incomplete"):
        export_source(ck / tag_name(9))
    with pytest.raises(FileNotFoundError, match="not a pretraining run"):
        export_source(tmp_path)


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory):
    """Short generated clips (chirps in noise) as 4 shards, a validation folder, and configs."""
    from ssast.shards import write_shards

    root = tmp_path_factory.mktemp("pretrain_data")
    rng = np.random.default_rng(0)
    for folder, n in (("train", 24), ("valid", 6)):
        (root / folder).mkdir()
        for i in range(n):
            t = np.arange(int(16000 * rng.uniform(0.25, 0.6))) / 16000  # some shorter than 32 frames
            f = rng.uniform(200, 3000)
            x = 0.3 * np.sin(2 * np.pi * f * t * (1 + rng.uniform(-0.5, 0.5) * t)) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / folder / f"clip{i:03d}.wav", x.astype(np.float32), 16000)
    summary = write_shards(root / "train", root / "shards", max_count=6)
    assert len(summary.shards) == 4
    (root / "model.json").write_text(json.dumps({"embed_dim": 32, "depth": 2, "num_heads": 2}))
    (root / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2,
                                              "gradient_clipping": 1.0}))
    return {"root": root, "shards": summary.pattern, "valid": str(root / "valid"), "model": str(root / "model.json"),
            "ds": str(root / "ds.json")}


def _args(data, out, *extra):
    geo = [data["model"] if a == "MODEL" else a for a in GEOMETRY]
    return ["pretrain", "--train", data["shards"], "--valid", data["valid"], "--out", str(out), *geo,
            "--batch-size", "4", "--num-workers", "0", "--lr", "1e-3", "--warmup-steps", "2", "--save-every", "3",
            "--valid-every", "3", "--log-every", "1", "--no-progress", *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ssast.cli", *args]


def _single(args):
    return [sys.executable, "-m", "ssast.cli", *args]


def _run(cmd, timeout=240):
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


def _records(run, kind="train"):
    """The last logged record of each step (a killed run logged some steps twice)."""
    out = {}
    path = Path(run) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the line being written as we read
            continue
        if r["kind"] == kind:
            out[r["step"]] = r
    return out


def _kill_tree(proc):
    """SIGKILL a launcher and every process it started (by pid)."""
    import psutil

    procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive


@needs_deepspeed
def test_two_process_kill_and_resume(pretrain_data, tmp_path):
    """A 2-process ZeRO-2 run killed with SIGKILL resumes where its newest complete checkpoint
    left it, and its losses match those of an uninterrupted run step for step."""
    data = pretrain_data
    killed = tmp_path / "killed"
    # An open-ended run, killed once it has passed its first checkpoint (step 3).
    err = tmp_path / "killed.err"
    with open(err, "w") as f:
        proc = subprocess.Popen(_torchrun(_args(data, killed, "--max-steps", "100000", "--deepspeed-config", data["ds"])),
                                env=_env(), stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if (killed / "metrics.jsonl").exists() and max(_records(killed), default=0) >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, err.read_text()[-4000:]
        _kill_tree(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    ck = killed / "checkpoints"
    last = complete_tags(ck)[-1][0]
    assert last >= 3 and last % 3 == 0
    # A save cut short after it had pointed DeepSpeed's 'latest' at it: no marker, a truncated file.
    broken = ck / tag_name(last + 2)
    shutil.copytree(ck / tag_name(last), broken)
    (broken / MARKER).unlink()
    for f in broken.glob("zero_pp_rank_1_*"):
        f.write_bytes(f.read_bytes()[:100])
    (ck / "latest").write_text(broken.name)

    max_steps = last + 4  # ends off the save interval: a final save and export at the last step
    _run(_torchrun(_args(data, killed, "--resume", "--max-steps", str(max_steps), "--deepspeed-config", data["ds"])))
    reference = tmp_path / "reference"
    _run(_torchrun(_args(data, reference, "--max-steps", str(max_steps), "--deepspeed-config", data["ds"])))

    ref, got = _records(reference), _records(killed)
    assert sorted(ref) == sorted(got) == list(range(1, max_steps + 1))
    for step in ref:
        for key in ("loss", "nce", "mse", "acc"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert len({round(r["loss"], 6) for r in ref.values()}) > max_steps // 2  # the losses do move
    p_ref, p_got = _records(reference, "perf"), _records(killed, "perf")
    assert all(p_got[s]["lr"] == p_ref[s]["lr"] for s in p_ref)
    v_ref, v_got = _records(reference, "valid"), _records(killed, "valid")
    assert sorted(v_ref) == [s for s in range(3, max_steps + 1, 3)]
    assert all(v_got[s]["acc"] == pytest.approx(v_ref[s]["acc"], rel=1e-6) for s in v_ref)

    assert not broken.exists()  # the broken tag was cleared away ...
    assert (ck / "latest").read_text() == tag_name(max_steps)  # ... and 'latest' names a complete tag
    assert [s for s, _ in complete_tags(ck)][-1] == max_steps and len(complete_tags(ck)) <= 3
    log = (killed / "train.log").read_text()
    assert f"resumed from {ck / tag_name(last)} at step {last}" in log and "removed incomplete checkpoint" in log
    assert list((killed / "tensorboard").glob("events.out.tfevents.*"))

    # Exports: project and released formats, from the end of the run and from the best validation.
    a, b = read_checkpoint(killed / "ssast.pt"), read_checkpoint(killed / "ssast_released.pth")
    assert a.meta["step"] == max_steps and a.features["num_mel_bins"] == 16 and a.config.grid == (4, 8)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    best = json.loads((killed / "best" / "valid.json").read_text())
    assert best["acc"] == max(v["acc"] for v in v_ref.values())
    assert read_checkpoint(killed / "best" / "ssast_released.pth").stage == "pretrain"


class _Payload:
    """Unpickled with weights_only=False, it creates the file its environment names."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SSAST_TEST_MARKER']}",))


def plant_malicious_pickle(path: Path, marker: Path) -> None:
    os.environ["SSAST_TEST_MARKER"] = str(marker)
    try:
        torch.save({"module": {}, "x": _Payload()}, path)
    finally:
        del os.environ["SSAST_TEST_MARKER"]


def _rank_processes(run: Path):
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(run) in " ".join(p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


@needs_deepspeed
def test_killed_launcher_takes_its_ranks_and_one_run_per_folder(pretrain_data, tmp_path):
    """Killing torchrun's process group (the launcher only: it starts its ranks in sessions of
    their own) stops the ranks too; while a run lives, a second run into its folder is refused,
    naming the holder; the kernel releases the folder's lock with the run."""
    import psutil

    from ssast.engine.setup import RunLock

    data = pretrain_data
    run = tmp_path / "live"
    err = tmp_path / "live.err"
    with open(err, "w") as f:
        launcher = subprocess.Popen(_torchrun(_args(data, run, "--max-steps", "100000")), env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and launcher.poll() is None:
            if (run / "metrics.jsonl").exists() and max(_records(run), default=0) >= 1:
                break
            time.sleep(0.05)
        assert launcher.poll() is None, err.read_text()[-4000:]
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "ssast.cli" in " ".join(p.cmdline())]
        assert len(ranks) >= 2
        second = subprocess.run(_single(_args(data, run, "--resume", "--max-steps", "100000")), env=_env(),
                                capture_output=True, text=True, timeout=240)
        assert second.returncode == 2 and "in use by pid" in second.stderr, second.stderr[-3000:]
        holder = json.loads((run / ".ssast.lock").read_text())
        assert holder["pid"] in [p.pid for p in ranks] and f"pid {holder['pid']}" in second.stderr
        os.killpg(launcher.pid, signal.SIGKILL)  # what a terminal or a scheduler does to the job
        launcher.wait(timeout=30)
        _, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive, [p.pid for p in alive]
        assert not _rank_processes(run)
    finally:
        for p in _rank_processes(run):
            p.kill()
    RunLock(run).acquire().release()  # free again


@needs_deepspeed
def test_resume_refuses_a_run_folder_that_would_run_code(pretrain_data, tmp_path):
    """--resume reads every file of the run with weights_only=True: a planted pickle is refused,
    named, and never executed (DeepSpeed's own loader would have run it)."""
    data = pretrain_data
    run = tmp_path / "run"
    _run(_single(_args(data, run, "--max-steps", "3")))
    marker = tmp_path / "pwned"
    # The optimizer partition: DeepSpeed reads it after the model states (which the fine-tuning
    # test plants), through the same checkpoint engine.
    for victim in ("zero_pp_rank_0_mp_rank_00_optim_states.pt",):
        target = run / "checkpoints" / tag_name(3) / victim
        saved = target.read_bytes()
        plant_malicious_pickle(target, marker)
        p = subprocess.run(_single(_args(data, run, "--resume", "--max-steps", "6")), env=_env(), capture_output=True,
                           text=True, timeout=240)
        assert p.returncode == 2 and "refused to unpickle" in p.stderr and victim in p.stderr, p.stderr[-3000:]
        assert not marker.exists()
        target.write_bytes(saved)
    _run(_single(_args(data, run, "--resume", "--max-steps", "4")))  # the genuine files still resume


def test_stale_extension_build_lock_is_removed_and_a_held_one_named(tmp_path):
    """A start killed while DeepSpeed built its CPU op leaves the build's lock: removed when no
    process holds it, named with its holder when one does, never waited on silently."""
    from ssast.engine.distributed import check_build_locks

    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    held = tmp_path / "py311_cpu" / "deepspeed_cpu_adam" / "lock"
    for lock in (stale, held):
        lock.parent.mkdir(parents=True)
        lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(held)!r}); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        messages = check_build_locks(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not stale.exists() and held.exists()
    assert any("removed" in m and str(stale) in m for m in messages)
    assert any(f"process {holder.pid}" in m and str(held) in m for m in messages)


@needs_deepspeed
def test_pretraining_reads_pcm16_and_fbank_shards(pretrain_data, tmp_path):
    """The engine takes shards of every format: 16-bit PCM (decoded in the workers) and
    precomputed fbank (normalized on the device), as a weighted mixture."""
    from ssast.features import FeatureConfig
    from ssast.shards import write_shards

    data = pretrain_data
    pcm = write_shards(data["root"] / "train", tmp_path / "pcm", max_count=12, audio_format="pcm16")
    fb = write_shards(data["root"] / "train", tmp_path / "fbank", max_count=12, audio_format="fbank",
                      features=FeatureConfig(num_mel_bins=16, target_length=32))
    run = tmp_path / "run"
    args = _args(data, run, "--max-steps", "2")
    i = args.index("--train")
    args[i + 1:i + 2] = [pcm.pattern, fb.pattern]
    _run(_single(args))
    train = _records(run)
    assert sorted(train) == [1, 2] and all(math.isfinite(r["loss"]) for r in train.values())


@needs_deepspeed
def test_export_and_reload(pretrain_data, tmp_path, capsys):
    """ssast export takes a run folder or a tag folder; the exports load for fine-tuning."""
    from ssast.cli import main

    data = pretrain_data
    run = tmp_path / "run"
    _run(_single(_args(data, run, "--max-steps", "4", "--deepspeed-config", data["ds"])))
    # Run again on the finished run: nothing to train.
    p = _run(_single(_args(data, run, "--resume", "--max-steps", "4", "--deepspeed-config", data["ds"])))
    assert "nothing to train" in p.stderr
    # Without --resume an existing run is not overwritten.
    p = subprocess.run(_single(_args(data, run, "--max-steps", "4")), env=_env(), capture_output=True, text=True)
    assert p.returncode == 2 and "--resume" in p.stderr

    out = tmp_path / "exported.pth"
    assert main(["export", str(run), "--format", "released", "--out", str(out)]) == 0
    assert main(["export", str(run / "checkpoints" / tag_name(3)), "--format", "ssast", "--out",
                 str(tmp_path / "step3.pt")]) == 0
    capsys.readouterr()
    final = read_checkpoint(run / "ssast.pt")
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in sd) and int(sd["module.p_input_tdim"]) == 32
    assert all(torch.equal(sd[f"module.{k}"], v) for k, v in final.state.items())
    step3 = read_checkpoint(tmp_path / "step3.pt")
    assert step3.meta["step"] == 3 and not torch.equal(step3.state["v.pos_embed"], final.state["v.pos_embed"])

    # Fine-tuning from the released export (overlapping strides, longer input), and the project export as is.
    ft_cfg = final.config.replace(stage="finetune", fstride=2, tstride=2, input_tdim=40, label_dim=3)
    ft = ASTModel(config=ft_cfg, load_pretrained_mdl_path=str(out))
    assert torch.equal(ft.v.blocks[1].mlp.fc1.weight, final.state["v.blocks.1.mlp.fc1.weight"])
    assert ft(torch.randn(2, 40, 16), "ft_avgtok").shape == (2, 3)
    pre = load(run / "ssast.pt")
    assert pre.stage == "pretrain" and pre.features.target_length == 32
    assert torch.equal(pre.model.v.pos_embed, final.state["v.pos_embed"])
    # The run folder itself is a model for every command: its newest complete checkpoint.
    assert load(run).config == pre.config


@needs_deepspeed
def test_single_process_two_pass(pretrain_data, tmp_path):
    """No launcher, default DeepSpeed config (ZeRO 2, fp32 on CPU), the 2021 two-pass schedule."""
    data = pretrain_data
    run = tmp_path / "two_pass"
    _run(_single(_args(data, run, "--max-steps", "3", "--two-pass", "--num-workers", "1")))
    train, perf = _records(run), _records(run, "perf")
    assert sorted(train) == [1, 2, 3]
    for step, r in train.items():
        assert r["loss"] == pytest.approx(r["nce"] + 10 * r["mse"], rel=1e-5)
        assert perf[step]["lr"] == pytest.approx(learning_rate(step - 1, 1e-3, 2))
        assert 0 <= perf[step]["data_wait_frac"] <= 1 and perf[step]["clips_per_s"] > 0 and perf[step]["memory_gb"] > 0
    ck = read_checkpoint(run / "ssast.pt")
    assert ck.meta["objective"]["two_pass"] is True and ck.meta["deepspeed"]["zero_stage"] == 2
    assert json.loads((run / "run.json").read_text())["objective"]["cluster"] is True


@needs_deepspeed
def test_compiled_run_saves_and_resumes_with_the_same_keys(pretrain_data, tmp_path):
    """--compile on the engine, with activation checkpointing: finite losses, the model's own
    state-dict keys in the files written, and a resume that loads them (the eager losses are
    compared in tests/test_step.py)."""
    data = pretrain_data
    run = tmp_path / "compiled"
    common = ("--compile", "--grad-checkpointing", "--valid-every", "100")
    _run(_single(_args(data, run, "--max-steps", "1", *common)), timeout=400)
    keys = list(ASTModel(config=read_checkpoint(run / "ssast.pt").config).state_dict())
    assert list(read_checkpoint(run / "ssast.pt").state) == keys
    p = _run(_single(_args(data, run, "--resume", "--max-steps", "2", *common)), timeout=400)
    assert "resumed from" in p.stderr
    assert all(math.isfinite(r["loss"]) for r in _records(run).values()) and sorted(_records(run)) == [1, 2]
    assert list(read_checkpoint(run / "ssast.pt").state) == keys
    released = torch.load(run / "ssast_released.pth", map_location="cpu", weights_only=True)
    assert released and not any("_orig_mod" in k for k in released)
