"""Fine-tuning: schedules, sampling weights, weight averaging, the loop's per-group rates, and
real ``ssast finetune`` runs on generated tones with a two-block, 32-wide model on 16 mel bins."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_config
from ssast import ASTModel, load, read_checkpoint, save_released
from ssast.engine.finetune import FinetuneConfig, build_model, param_groups, results_header
from ssast.engine.finetune_objective import average_weights, balanced_weights
from ssast.engine.loop import TrainState, fit
from ssast.engine.schedule import cosine_factor, finetune_lr, step_decay_factor
from ssast.evaluate import evaluate
from ssast.features import FeatureConfig

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
REPO = Path(__file__).resolve().parents[1]
MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_prefix_tokens": 2}
GEOMETRY = ["--fshape", "4", "--tshape", "4", "--fstride", "4", "--tstride", "4", "--num-mel-bins", "16",
            "--target-length", "48"]


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("start,step,decay", [(5, 1, 0.85), (10, 5, 0.5), (0, 2, 0.9)])
def test_step_schedule_matches_multistep_lr(start, step, decay):
    """The official recipes' MultiStepLR(range(start, 1000, step)), stepped after every epoch."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(start, 1000, step)), gamma=decay)
    for epoch in range(30):
        assert step_decay_factor(epoch, start, step, decay) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        opt.step()
        ref.step()
    # Per step: the factor of the step's epoch.
    assert finetune_lr(3 * 7 + 2, lr=2.0, steps_per_epoch=7, total_steps=210, schedule="step", start=start,
                       step_size=step, decay=decay) == pytest.approx(2.0 * step_decay_factor(3, start, step, decay))


def test_cosine_schedule_matches_torch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    for s in range(50):
        assert cosine_factor(s, 50) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), s
        opt.step()
        ref.step()
    # Warm-up: linear ramp times the schedule, full rate afterwards.
    lrs = [finetune_lr(s, lr=1e-3, steps_per_epoch=10, total_steps=100, schedule="cosine", warmup_steps=10)
           for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx(0.5e-3) and lrs[-1] < 1e-5
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))
    with pytest.raises(ValueError):
        finetune_lr(0, lr=1.0, steps_per_epoch=1, total_steps=1, schedule="linear")


# ----------------------------------------------------------------------------- sampling, averaging

def test_balanced_weights_formula():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=torch.float32)
    counts = [3, 1, 2]
    expected = [sum(1000.0 / (counts[c] + 0.01) for c in range(3) if targets[i, c]) for i in range(4)]
    assert balanced_weights(targets).tolist() == pytest.approx(expected)
    assert balanced_weights(targets)[1] > balanced_weights(targets)[0]  # the clip with a rare label


def test_average_weights():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(0.0)}
    avg = average_weights(iter([a, b]))
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["b"].item() == 1.5
    with pytest.raises(ValueError):
        average_weights([a, {"w": a["w"]}])
    with pytest.raises(ValueError):
        average_weights([])


# ----------------------------------------------------------------------------- the loop's rates

class _FakeEngine:
    """What fit() uses of a DeepSpeed engine, with a real optimizer over a real model's groups."""

    def __init__(self, model, optimizer):
        self.module, self.optimizer, self.world_size = model, optimizer, 1
        self.seen = []

    def gradient_accumulation_steps(self):
        return 1

    def train_micro_batch_size_per_gpu(self):
        return 2

    def train(self, mode=True):
        self.module.train(mode)

    def eval(self):
        self.module.eval()

    def __call__(self, *a, **kw):
        return self.module(*a, **kw)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.seen.append({g["name"]: g["lr"] for g in self.optimizer.param_groups})
        self.optimizer.step()
        self.optimizer.zero_grad()


class _Log:
    def info(self, *a):
        pass

    def scalars(self, *a):
        pass

    def advance(self, *a, **k):
        pass


def test_layer_decay_groups():
    """Block i of L at decay**(L - i); embeddings at decay**(L + 1); the final norm at 1; every parameter once."""
    model = ASTModel(config=tiny_config(stage="finetune", label_dim=3))
    depth = model.config.depth
    groups = param_groups(model, head_lr=10.0, freeze_encoder=False, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale_of) == sum(1 for _ in model.parameters()) == sum(len(g["params"]) for g in groups)
    for name, p in model.named_parameters():
        if name.startswith("mlp_head."):
            want = 10.0
        elif name.startswith("v.blocks."):
            want = 0.5 ** (depth - int(name.split(".")[2]))
        elif name.startswith("v.norm."):
            want = 1.0
        else:  # patch projection, prefix tokens, positional embedding
            want = 0.5 ** (depth + 1)
        assert scale_of[id(p)] == pytest.approx(want), name
    assert [g["name"] for g in param_groups(model, 1.0, False)] == ["encoder", "mlp_head"]
    with pytest.raises(ValueError, match="layer decay"):
        param_groups(model, 1.0, False, layer_decay=1.5)


@pytest.mark.parametrize("freeze", [False, True])
def test_head_lr_multiplier_in_loop(freeze):
    from ssast.engine.config import TrainSettings
    from ssast.engine.finetune_objective import ClassificationObjective

    torch.manual_seed(0)
    model = ASTModel(config=tiny_config(stage="finetune", label_dim=3))
    groups = param_groups(model, head_lr=10.0, freeze_encoder=freeze)
    engine = _FakeEngine(model, torch.optim.Adam(groups, lr=1.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Stream:
        def batches(self, step):
            g = torch.Generator().manual_seed(1)
            while True:
                yield {"x": torch.randn(2, 32, 16, generator=g), "target": torch.eye(3)[[0, 2]]}

    class Features:
        device = torch.device("cpu")

        def __call__(self, batch):
            return batch["x"]

    features = Features()
    settings = TrainSettings(max_steps=6, lr=1e-3, valid_every=100, save_every=100, log_every=3)
    sched = lambda step: finetune_lr(step, lr=1e-3, steps_per_epoch=2, total_steps=6, schedule="step",  # noqa: E731
                                   start=1, step_size=1, decay=0.5)
    fit(engine, ClassificationObjective("ft_avgtok", "ce", False, "acc"), Stream(), features, settings,
        TrainState(), rank=0, runlog=_Log(), lr=sched)
    expected = [1e-3, 1e-3, 0.5e-3, 0.5e-3, 0.25e-3, 0.25e-3]
    assert [s["mlp_head"] for s in engine.seen] == pytest.approx([10 * e for e in expected])
    if freeze:
        assert [g["name"] for g in engine.optimizer.param_groups] == ["mlp_head"]
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("mlp_head."))
        assert not torch.equal(before["mlp_head.1.weight"], after["mlp_head.1.weight"])
    else:
        assert [s["encoder"] for s in engine.seen] == pytest.approx(expected)


# ----------------------------------------------------------------------------- initialisation

def test_init_from_released_fixture_and_scratch(fixtures):
    feats = FeatureConfig(num_mel_bins=128, target_length=100)
    path = fixtures / "ssast_tiny_patch_pretrain_t1024.pth"
    cfg = FinetuneConfig(out="unused", train="unused", init=str(path), fstride=10, tstride=10, features=feats,
                         task="ft_cls")
    model, text = build_model(cfg, label_dim=7)
    ckpt = read_checkpoint(path)
    assert "released" in text and model.config.label_dim == 7 and model.config.default_task == "ft_cls"
    assert (model.config.input_tdim, model.config.fstride) == (100, 10)
    own = model.state_dict()
    for k, v in ckpt.state.items():
        if k.startswith("v.") and k not in ("v.pos_embed", "v.patch_embed.proj.weight"):
            assert torch.equal(own[k], v), k
    assert model(torch.randn(2, 100, 128)).shape == (2, 7)
    scratch, text = build_model(FinetuneConfig(out="u", train="u", init="scratch", model_config=MODEL, fshape=4,
                                               tshape=4, fstride=4, tstride=4,
                                               features=FeatureConfig(num_mel_bins=16, target_length=48)), 3)
    assert "scratch" in text and scratch.config.embed_dim == 32 and scratch.config.grid == (4, 12)
    with pytest.raises(FileNotFoundError):
        build_model(FinetuneConfig(out="u", train="u", init="/no/such/file.pth"), 3)


# ----------------------------------------------------------------------------- real runs

def _tones(root: Path) -> dict:
    """Three classes of noisy tones, half-second clips: train and valid as official JSON datafiles
    (label ids /m/c0.. with the display names class0.. in their label CSV), test as a folder per
    class (labelled by display name)."""
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    entries = {"train": [], "valid": []}
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        for c, f0 in enumerate((300, 1200, 4000)):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.05 * rng.standard_normal()) * t)
                sf.write(d / f"{i}.wav", (x + 0.05 * rng.standard_normal(t.size)).astype(np.float32), 16000)
                if split in entries:
                    entries[split].append({"wav": f"{split}/class{c}/{i}.wav", "labels": f"/m/c{c}"})
    for split, data in entries.items():
        (root / f"{split}.json").write_text(json.dumps({"data": data}))
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n" + "".join(
        f"{c},/m/c{c},class{c}\n" for c in range(3)))
    (root / "model.json").write_text(json.dumps(MODEL))
    return {"train": str(root / "train.json"), "valid": str(root / "valid.json"), "test": str(root / "test")}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _finetune(data, out, *extra):
    cmd = [sys.executable, "-m", "ssast.cli", "finetune", "--train", data["train"], "--valid", data["valid"],
           "--test", data["test"], "--out", str(out), *GEOMETRY, "--mean", "-5", "--std", "4",
           "--epochs", "3", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress",
           "--log-every", "2", *extra]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = _tones(root / "data")
    out = root / "scratch"
    _finetune(data, out, *SCRATCH_ARGS(root))
    return data, out


def SCRATCH_ARGS(root):  # noqa: N802 - a constant that needs the folder
    return ["--init", "scratch", "--model-config", str(root / "data" / "model.json"), "--lr", "1e-3", "--epochs", "4",
            "--batch-size", "2", "--wa", "--wa-start", "2", "--wa-end", "3", "--freqm", "4", "--timem", "8", "--noise",
            "--mixup", "0.5", "--lr-scheduler", "cosine"]


@needs_deepspeed
def test_results_best_checkpoint_and_evaluate(scratch_run):
    data, out = scratch_run
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == results_header("acc")
        rows = list(reader)
    assert [r["split"] for r in rows] == ["valid"] * 4 + ["test", "wa_valid", "wa_test"]
    assert [int(r["epoch"]) for r in rows[:4]] == [1, 2, 3, 4]
    assert all(0 <= float(r["acc"]) <= 1 and float(r["train_loss"]) > 0 for r in rows[:4])
    best_epoch = int(rows[4]["epoch"])
    assert rows[best_epoch - 1]["best"] == "1"
    assert float(rows[best_epoch - 1]["acc"]) == max(float(r["acc"]) for r in rows[:4])
    # The ensemble of epoch 1 is epoch 1 itself.
    assert float(rows[0]["ensemble_acc"]) == pytest.approx(float(rows[0]["acc"]))

    model = load(out / "best.pt")
    # Trained on datafiles with label ids: the outputs carry the display names, the ids beside them.
    assert model.labels == ["class0", "class1", "class2"] and model.label_ids == ["/m/c0", "/m/c1", "/m/c2"]
    assert model.multilabel is False and model.task == "ft_avgtok"
    assert model.meta["epoch"] == best_epoch
    assert model.features == FeatureConfig(num_mel_bins=16, target_length=48, mean=-5.0, std=4.0)
    # The log reports only what happened: fine-tuning's schedule is a function of the step, with no
    # plateau, so no validation may log a rate reduction or a plateau scale.
    assert "halved" not in (out / "train.log").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert len(valid) == 4 and not any("lr_scale" in r for r in valid)
    # Files the run writes have the user's normal permissions (not mkstemp's 0600).
    mask = os.umask(0)
    os.umask(mask)
    for f in (out / "best.pt", out / "results.csv", out / "wa.pt", out / "run.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    # ssast evaluate on the test set gives the recorded test metrics.
    res = evaluate(out / "best.pt", data["test"], device="cpu")
    for k in ("acc", "mAP", "mAUC", "precision", "recall"):
        assert res["metrics"][k] == pytest.approx(float(rows[4][k]), abs=2e-5), k
    p = subprocess.run([sys.executable, "-m", "ssast.cli", "evaluate", str(out / "best.pt"), "--data", data["test"],
                        "--no-progress"], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and f"{float(rows[4]['acc']):.4f}" in p.stdout, p.stdout + p.stderr

    # Weight averaging: wa.pt holds the mean of the weights saved at epochs 2 and 3.
    saved = [torch.load(out / "wa" / f"epoch{e:03d}.pt", weights_only=True) for e in (2, 3)]
    wa = read_checkpoint(out / "wa.pt").state
    for k in saved[0]:
        assert torch.allclose(wa[k], (saved[0][k] + saved[1][k]) / 2, atol=1e-7), k
    assert not torch.equal(saved[0]["mlp_head.1.weight"], saved[1]["mlp_head.1.weight"])
    res = evaluate(out / "wa.pt", data["test"], device="cpu")
    assert res["metrics"]["acc"] == pytest.approx(float(rows[6]["acc"]))
    # Per-epoch validation predictions for the checkpoint ensemble.
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"valid_epoch{e:03d}.npy" for e in (1, 2, 3, 4)]


@needs_deepspeed
def test_frozen_encoder_from_released_checkpoint(scratch_run, tmp_path):
    data, _ = scratch_run
    torch.manual_seed(3)
    pre = ASTModel(config=tiny_config(input_tdim=48))
    save_released(pre, tmp_path / "pre.pth")
    out = tmp_path / "probe"
    _finetune(data, out, "--init", str(tmp_path / "pre.pth"), "--freeze-encoder", "--head-lr", "10", "--lr", "1e-3",
              "--no-warmup", "--epochs", "2")
    best = read_checkpoint(out / "best.pt").state
    ref = pre.state_dict()
    for k, v in best.items():
        if k.startswith("v."):
            assert torch.equal(v, ref[k]), k  # same geometry: nothing resampled, nothing trained
    head = ASTModel(config=tiny_config(stage="finetune", label_dim=3, input_tdim=48)).state_dict()
    assert best["mlp_head.1.weight"].shape == head["mlp_head.1.weight"].shape
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["split"] for r in rows] == ["valid", "valid", "test"]
    # Resuming a finished run trains nothing and keeps the results.
    _finetune(data, out, "--init", str(tmp_path / "pre.pth"), "--freeze-encoder", "--head-lr", "10", "--lr", "1e-3",
              "--no-warmup", "--epochs", "2", "--resume")
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    assert not math.isnan(float(rows[-1]["acc"]))
    # A run folder from elsewhere cannot run code on --resume: every file is read weights-only.
    from test_pretrain import plant_malicious_pickle

    marker = tmp_path / "pwned"
    (tag,) = (out / "checkpoints").glob("global_step*")
    plant_malicious_pickle(tag / "mp_rank_00_model_states.pt", marker)
    cmd = [sys.executable, "-m", "ssast.cli", "finetune", "--train", data["train"], "--valid", data["valid"],
           "--test", data["test"], "--out", str(out), *GEOMETRY, "--mean", "-5", "--std", "4", "--init",
           str(tmp_path / "pre.pth"), "--freeze-encoder", "--head-lr", "10", "--lr", "1e-3", "--no-warmup", "--epochs",
           "2", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress", "--log-every", "2",
           "--resume"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "refused to unpickle" in p.stderr and "mp_rank_00_model_states.pt" in p.stderr
    assert not marker.exists()


@needs_deepspeed
def test_kill_and_resume_gives_the_uninterrupted_results(scratch_run, tmp_path):
    """SIGKILL after epoch 2's checkpoint, then --resume: the same rows as the uninterrupted run
    (same clip order, crops, SpecAugment, mixup and noise draws after the resume)."""
    data, full = scratch_run
    root = full.parent
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ssast.cli", "finetune", "--train", data["train"], "--valid", data["valid"],
           "--test", data["test"], "--out", str(out), *GEOMETRY, "--mean", "-5", "--std", "4",
           "--num-workers", "0", "--device", "cpu", "--no-progress", "--log-every", "2", *SCRATCH_ARGS(root)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() == "global_step18":  # 9 steps per epoch
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    done = [r for r in csv.DictReader(open(out / "results.csv")) if r["split"] == "valid"]
    if len(done) == 4:
        pytest.skip("the run ended before it could be killed")
    _finetune(data, out, *SCRATCH_ARGS(root), "--resume")
    resumed = list(csv.DictReader(open(out / "results.csv")))
    ref = list(csv.DictReader(open(full / "results.csv")))
    assert [r["split"] for r in resumed] == [r["split"] for r in ref]
    for a, b in zip(resumed, ref):
        for k in ("train_loss", "loss", "acc", "mAP"):
            assert float(a[k] or "nan") == pytest.approx(float(b[k] or "nan"), rel=1e-4, nan_ok=True), (a, b)
