"""One GPU check: resume, pretraining throughput, features, fine-tuning and inference, one table.

Rows (each part runs in a process of its own, with a time limit, so that one that fails, hangs
or runs out of memory leaves the others standing; its row then carries the error):

- a. ``ssast pretrain`` (the command line) of the tiny model on generated clips, bf16 DeepSpeed:
  the process group is killed with SIGKILL past its first checkpoint and the run is resumed with
  ``--resume``; the row says from which step it resumed and that it reached its last step;
- b. base-model pretraining (forward, backward, Adam) at 1024 frames x 128 bins, 16x16 patches,
  400 masked, ``nce + 10 * mse`` in bf16 autocast: one encoder pass (``pretrain_joint``) and
  the 2021 two-pass schedule (``pretrain_mpc`` then ``pretrain_mpg``), eager and with the
  blocks compiled (:func:`ssast.device.compile_encoder`), each at the largest batch of a
  descending list that fits; FLOPs of one step counted by ``torch.utils.flop_counter`` give
  TFLOP/s and the fraction of the GPU's dense bf16 peak;
- c. batched fbank (:func:`ssast.features.fbank`) of 10 s clips already on the device;
- d. the base AST (``ft_cls``, 1024 frames, stride 10) against transformers'
  ``ASTForAudioClassification`` (SDPA) on the same weights (:func:`ssast.hf.export_hf`), bf16:
  fine-tuning steps (forward, backward, Adam) and inference;
- e. peak memory of each row: ``torch.cuda.max_memory_allocated`` from a reset before the row
  (on a CPU, the part's peak resident memory).

    bash benchmarks/gpu_check.sh                     # on a GPU, under 8 minutes
    bash benchmarks/gpu_check.sh --cpu --out /tmp/c  # tiny sizes on the CPU, a minute or two

The table goes to OUT/gpu_check.txt and the figures to OUT/gpu_check.json (OUT defaults to
benchmarks/results). The exit status is 1 when any row failed.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The work of each part on a GPU and, with --cpu, on a CPU (tiny sizes, a few steps).
SIZES = {
    "gpu": {
        "resume": dict(encoder="tiny", fshape=16, bins=128, frames=1024, mask=400, batch=8, save_every=10,
                       clips=24, seconds=10.24, workers=2, ds="ds_config_zero2_bf16.json", run_timeout=60),
        "pretrain": dict(encoder="base", fshape=16, bins=128, frames=1024, mask=400, warmup=3, steps=10,
                         batches=(512, 384, 256, 192, 128, 96, 64, 48, 32, 16, 8, 4, 2, 1)),
        "fbank": dict(clips=512, batch=128, seconds=10.0, repeat=5),
        "finetune": dict(encoder="base", fshape=16, stride=10, bins=128, frames=1024, labels=527, warmup=3, steps=10,
                         train_batches=(64, 48, 32, 24, 16, 8, 4, 2, 1),
                         infer_batches=(256, 128, 64, 32, 16, 8, 4, 2, 1)),
    },
    "cpu": {
        "resume": dict(encoder={"embed_dim": 32, "depth": 2, "num_heads": 2}, fshape=4, bins=16, frames=32, mask=8,
                       batch=4, save_every=3, clips=12, seconds=0.4, workers=0, ds="ds_config_cpu.json",
                       run_timeout=100),
        "pretrain": dict(encoder={"embed_dim": 32, "depth": 2, "num_heads": 2}, fshape=4, bins=16, frames=64, mask=16,
                         warmup=1, steps=3, batches=(4, 2)),
        "fbank": dict(clips=16, batch=8, seconds=1.0, repeat=2),
        "finetune": dict(encoder={"embed_dim": 32, "depth": 2, "num_heads": 2}, fshape=4, stride=2, bins=16, frames=32,
                         labels=10, warmup=1, steps=3, train_batches=(4, 2), infer_batches=(8, 4)),
    },
}

# part: (rows it reports, modules it needs, time limit in seconds on a GPU / with --cpu); the GPU
# limits add up to 8 minutes. On a CPU the first DeepSpeed start on a machine builds its
# communication op (about a minute), hence the resume part's margin.
PARTS = {
    "resume": (("a",), ("torch", "timm", "deepspeed", "numpy", "soundfile"), (130, 220)),
    "pretrain": (("b1", "b3", "b2", "b4"), ("torch", "timm"), (250, 190)),
    "fbank": (("c",), ("torch",), (20, 20)),
    "finetune": (("d1", "d2", "d3", "d4"), ("torch", "timm", "transformers", "safetensors"), (80, 40)),
}
TITLES = {
    "a": "pretrain (CLI, DeepSpeed): killed, resumed",
    "b1": "pretrain single-pass, eager",
    "b2": "pretrain single-pass, compiled",
    "b3": "pretrain two-pass (2021), eager",
    "b4": "pretrain two-pass (2021), compiled",
    "c": "batched fbank",
    "d1": "fine-tune ssast (ft_cls)",
    "d2": "fine-tune transformers (sdpa)",
    "d3": "inference ssast (ft_cls)",
    "d4": "inference transformers (sdpa)",
}
ROW_ORDER = tuple(TITLES)
SCHEDULES = {"single-pass": "single-pass bf16", "two-pass": "two-pass bf16"}  # benchmarks/pretrain_step.py's modes


# ----------------------------------------------------------------------------- shared by the parts

def model_config(spec: dict, stage: str, stride: int | None = None, labels: int = 527):
    """The ModelConfig of a part: a size name or a dict of encoder fields, square patches."""
    from ssast.config import SIZES as MODEL_SIZES
    from ssast.config import ModelConfig

    enc = spec["encoder"]
    encoder = {"model_size": enc, **MODEL_SIZES[enc]} if isinstance(enc, str) else {"model_size": "custom", **enc}
    k, s = spec["fshape"], stride or spec["fshape"]
    return ModelConfig(**encoder, fshape=k, tshape=k, fstride=s, tstride=s, input_fdim=spec["bins"],
                       input_tdim=spec["frames"], label_dim=labels, stage=stage,
                       default_task="ft_cls" if stage == "finetune" else "ft_avgtok")


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def peak_bf16_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by name (benchmarks/pretrain_memory.py's table), None if unknown."""
    from pretrain_memory import _peak_tflops

    tflops = _peak_tflops(name, "bf16")
    return None if tflops is None else tflops * 1e12


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def largest_batch(try_batch, batches) -> tuple[int, list[int]]:
    """The first batch of the descending list ``batches`` for which ``try_batch(b)`` runs without
    running out of memory, and the batches that did not fit. Other errors propagate."""
    too_big = []
    for b in batches:
        try:
            try_batch(b)
            return b, too_big
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are caught, the rest re-raised
            if not is_oom(e):
                raise
        # Out of the except block: the error's traceback, which holds the step's tensors, is gone.
        too_big.append(b)
        free_memory()
    raise RuntimeError(f"no batch fits in memory (tried {', '.join(map(str, batches))})")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float:
    from ssast.engine.logging import memory_bytes

    sync(device)
    return memory_bytes(device) / 2**30


def tensor_bytes(*objs) -> int:
    """Bytes of the tensors of modules (parameters) and optimizers (state) on their devices."""
    import torch

    total = 0
    for o in objs:
        if isinstance(o, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in o.parameters())
        else:
            total += sum(t.numel() * t.element_size() for st in o.state.values() for t in st.values()
                         if isinstance(t, torch.Tensor))
    return total


def own_peak_gb(device, fn, static_bytes: int) -> float:
    """Peak memory of ``fn`` as if only its own model were on the device: ``static_bytes`` (its
    weights and optimizer state) plus what ``fn`` allocates on top of what is held when it starts.
    On a CPU, the process's peak resident memory."""
    import torch

    if device.type != "cuda":
        fn()
        return peak_gb(device)
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (static_bytes + torch.cuda.max_memory_allocated(device) - before) / 2**30


def median_seconds(fn, device, warmup: int, steps: int) -> tuple[float, float]:
    """(median seconds of ``steps`` timed calls, seconds of the first call) after ``warmup`` calls."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        first = first if first is not None else time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first if first is not None else times[0]


def step_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward) as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- a. kill and resume

def _train_records(run: Path, since: float = 0.0) -> dict[int, dict]:
    """The last logged record of each step in the run's metrics.jsonl ("train" and "perf" merged)."""
    out: dict[int, dict] = {}
    path = run / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the line being written as it is read
            continue
        if r.get("kind") in ("train", "perf") and r.get("time", 0) >= since:
            out.setdefault(r["step"], {}).update(r)
    return out


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _failure(what: str, log: Path) -> str:
    """``what``, the log's last line on the same line (the table shows the first), then its tail."""
    tail = _tail(log)
    return f"{what}: {tail.splitlines()[-1] if tail else 'no output'}\n{tail}"


def _write_clips(folder: Path, n: int, seconds: float, sample_rate: int = 16000) -> Path:
    """``n`` clips of tones in noise and a JSON datafile listing them."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tones = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) for _ in range(3))
        x = tones + 0.05 * rng.standard_normal(t.size)
        name = f"clips/clip{i:03d}.wav"
        sf.write(folder / name, x.astype(np.float32), sample_rate, subtype="PCM_16")
        items.append({"wav": name})
    datafile = folder / "train.json"
    datafile.write_text(json.dumps({"data": items}), encoding="utf-8")
    return datafile


def part_resume(size: dict, device, work: Path, emit, time_scale: float = 1.0) -> None:
    from ssast.engine.checkpointing import MODEL_FILE, complete_tags

    s = size
    datafile = _write_clips(work / "data", s["clips"], s["seconds"])
    run = work / "run"
    if isinstance(s["encoder"], str):
        model = ["--model-size", s["encoder"]]
    else:
        (work / "model.json").write_text(json.dumps(s["encoder"]), encoding="utf-8")
        model = ["--model-config", str(work / "model.json")]
    cmd = [sys.executable, "-m", "ssast.cli", "pretrain", "--train", str(datafile), "--out", str(run), *model,
           "--fshape", str(s["fshape"]), "--tshape", str(s["fshape"]), "--num-mel-bins", str(s["bins"]),
           "--target-length", str(s["frames"]), "--mask-patch", str(s["mask"]), "--batch-size", str(s["batch"]),
           "--num-workers", str(s["workers"]), "--save-every", str(s["save_every"]), "--log-every", "1",
           "--warmup-steps", "2", "--no-progress", "--deepspeed-config", str(REPO / "pretrain" / s["ds"]),
           "--device", device.type]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)

    # An open-ended run, killed with its process group once it is past its first checkpoint.
    log1 = work / "first.log"
    with open(log1, "w") as f:
        proc = subprocess.Popen(cmd + ["--max-steps", "1000000"], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    run_timeout = s["run_timeout"] * time_scale
    deadline = time.time() + run_timeout
    killed_at = saved = None
    try:
        while time.time() < deadline and proc.poll() is None:
            tags = complete_tags(run / "checkpoints")
            steps = _train_records(run)
            if tags and steps and max(steps) >= tags[-1][0] + 2:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(_failure(f"ssast pretrain exited with {proc.returncode} before its first checkpoint",
                                        log1))
        if time.time() >= deadline:
            raise TimeoutError(_failure(f"ssast pretrain passed no checkpoint in {run_timeout:g} s", log1))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = max(_train_records(run))
    tags = complete_tags(run / "checkpoints")
    saved = tags[-1][0]
    final = killed_at + s["save_every"]  # past the kill, and past another checkpoint

    log2 = work / "resumed.log"
    start = time.time()
    with open(log2, "w") as f:
        proc = subprocess.Popen(cmd + ["--resume", "--max-steps", str(final)], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=run_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise TimeoutError(_failure(f"ssast pretrain --resume did not finish in {run_timeout:g} s", log2)) from None
    if code != 0:
        raise RuntimeError(_failure(f"ssast pretrain --resume exited with {code}", log2))
    found = re.findall(r"resumed from (\S+) at step (\d+)", (run / "train.log").read_text(encoding="utf-8"))
    if not found:
        raise RuntimeError(f"{run / 'train.log'}: the resumed run logged no 'resumed from ... at step N'")
    resumed_from = int(found[-1][1])
    records = _train_records(run)
    after = _train_records(run, since=start)
    missing = sorted(set(range(1, final + 1)) - set(records))
    problems = []
    if resumed_from != saved:
        problems.append(f"resumed from step {resumed_from}, not from the newest complete checkpoint ({saved})")
    if missing:
        problems.append(f"{run / 'metrics.jsonl'}: steps {missing[:5]} were never logged")
    if complete_tags(run / "checkpoints")[-1][0] != final or not (run / MODEL_FILE).is_file():
        problems.append(f"{run}: no complete checkpoint and {MODEL_FILE} at the last step {final}")
    if not after or min(after) != resumed_from + 1:
        problems.append(f"the resumed run's first logged step is {min(after, default=None)}, not {resumed_from + 1}")
    if problems:
        raise RuntimeError("; ".join(problems))
    perf = [r for r in after.values() if "clips_per_s" in r]
    emit({"row": "a", "batch": s["batch"], "clips_per_s": statistics.median(r["clips_per_s"] for r in perf),
          "peak_gb": max(r["memory_gb"] for r in perf), "killed_at": killed_at, "saved": saved,
          "resumed_from": resumed_from, "final_step": final,
          "note": f"SIGKILL at step {killed_at}; resumed from step {resumed_from}; finished at step {final}"
                  f" ({s['ds'].removesuffix('.json')})"})


# ----------------------------------------------------------------------------- b. pretraining throughput

def _pretrain_rows(size: dict, device, emit, compiled: bool, batches: dict[str, int] | None) -> dict[str, int]:
    """The rows of both schedules, eager or compiled; returns the batch each one ran at."""
    import torch
    from pretrain_step import make_step

    from ssast import ASTModel
    from ssast.device import compile_encoder

    s = size
    peak = peak_bf16_flops(device_name(device)) if device.type == "cuda" else None
    rows = {"single-pass": "b2" if compiled else "b1", "two-pass": "b4" if compiled else "b3"}
    found = {}
    for schedule, row in rows.items():
        try:
            torch.manual_seed(0)
            model = ASTModel(config=model_config(s, "pretrain")).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999), fused=True)
            g = torch.Generator(device=device).manual_seed(0)

            def step_at(b, count=1):
                x = torch.randn(b, s["frames"], s["bins"], device=device)
                step = make_step(model, opt, x, SCHEDULES[schedule], s["mask"], g)
                for _ in range(count):
                    step()
                return step

            start = (batches or {}).get(schedule)
            candidates = [b for b in s["batches"] if start is None or b <= start]
            flops = None
            # A hook on a block's attention: run eagerly, it records False at every call; compiled,
            # it records True while torch.compile traces the block and nothing once the compiled
            # code runs (or when the code compiled for an earlier model is reused).
            traced = []
            if compiled:  # counted on the eager model, before the blocks are compiled
                flops = step_flops(step_at(candidates[-1], 0)) / candidates[-1]
                model.v.blocks[0].attn.register_forward_pre_hook(
                    lambda module, args: traced.append(torch.compiler.is_compiling()))
                compile_encoder(model, enabled=True, mode=None)
            t0 = time.perf_counter()
            batch, too_big = largest_batch(step_at, candidates)
            first = time.perf_counter() - t0
            if compiled and not all(traced):
                raise RuntimeError("compile_encoder left the encoder's blocks eager (they ran outside torch.compile)")
            found[schedule] = batch
            step = step_at(batch, 0)
            if flops is None:
                flops = step_flops(step) / batch
            reset_peak(device)
            sec, _ = median_seconds(step, device, s["warmup"], s["steps"])
            achieved = flops * batch / sec
            note = f"{s['encoder'] if isinstance(s['encoder'], str) else 'custom'}, {s['frames']}x{s['bins']}, " \
                   f"{s['mask']} masked"
            if too_big:
                note += f"; batch {too_big[-1]} did not fit"
            if compiled:
                note += f"; first steps {first:.1f} s (compiling)"
            emit({"row": row, "batch": batch, "clips_per_s": batch / sec, "seconds_per_step": sec,
                  "compiled": compiled and all(traced), "flops_per_clip": flops, "tflops": achieved / 1e12,
                  "peak_fraction": None if peak is None else achieved / peak, "peak_gb": peak_gb(device),
                  "note": note})
        except Exception as e:  # noqa: BLE001 - the row carries the error, the other rows still run
            emit(error_row(row, e))
        finally:
            model = opt = None
            free_memory()
    return found


def part_pretrain(size, device, work, emit) -> None:
    """Eager, then compiled from the largest batches that fitted eager (the rows are written as
    they are measured, so a compilation that fails or hangs leaves the eager rows)."""
    found = _pretrain_rows(size, device, emit, compiled=False, batches=None)
    _pretrain_rows(size, device, emit, compiled=True, batches=found)


# ----------------------------------------------------------------------------- c. features

def part_fbank(size: dict, device, work: Path, emit) -> None:
    import torch
    from features import timed

    from ssast.features import fbank

    s, sr = size, 16000
    g = torch.Generator().manual_seed(0)
    host = ((0.1 * torch.randn(s["clips"], int(s["seconds"] * sr), generator=g)).clamp(-1, 1) * 32767).round() / 32767
    data = [c.to(device) for c in host.split(s["batch"])]
    reset_peak(device)
    sec = timed(lambda: [fbank(c, sr) for c in data], lambda: sync(device), s["repeat"])
    emit({"row": "c", "batch": s["batch"], "clips_per_s": s["clips"] / sec, "peak_gb": peak_gb(device),
          "note": f"{s['clips']} clips of {s['seconds']:g} s at 16 kHz, 128 mel bins, on the device"})


# ----------------------------------------------------------------------------- d. fine-tuning and inference

def part_finetune(size: dict, device, work: Path, emit) -> None:
    import torch
    import torch.nn.functional as F
    import transformers
    from inference import timed_pair

    from ssast import ASTModel
    from ssast.hf import export_hf, to_hf_state_dict
    from ssast.loading import from_model

    s = size
    torch.manual_seed(0)
    ours = ASTModel(config=model_config(s, "finetune", stride=s["stride"], labels=s["labels"]))
    export_hf(from_model(ours, multilabel=True), work / "hf")
    theirs = transformers.ASTForAudioClassification.from_pretrained(work / "hf", attn_implementation="sdpa")
    ours, theirs = ours.to(device), theirs.to(device)
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    forward = {"ssast": lambda x: ours(x, "ft_cls"), "transformers": lambda x: theirs(input_values=x).logits}
    models = {"ssast": ours, "transformers": theirs}
    geometry = f"{s['frames']} frames, stride {s['stride']} ({ours.config.num_patches} patches)"

    def inputs(b):
        g = torch.Generator(device=device).manual_seed(b)
        x = torch.randn(b, s["frames"], s["bins"], device=device, generator=g)
        return x, (torch.rand(b, s["labels"], device=device, generator=g) < 0.05).float()

    # Fine-tuning: forward, backward and Adam step, both models at the same batch.
    try:
        ours.train(), theirs.train()
        opts = {k: torch.optim.Adam(m.parameters(), lr=1e-5, fused=True) for k, m in models.items()}

        def train_steps(b):
            x, y = inputs(b)

            def one(name):
                def step():
                    opts[name].zero_grad(set_to_none=True)
                    with amp():
                        loss = F.binary_cross_entropy_with_logits(forward[name](x).float(), y)
                    loss.backward()
                    opts[name].step()
                return step
            return one("ssast"), one("transformers")

        def fits(b):
            for step in train_steps(b):
                step()

        batch, too_big = largest_batch(fits, s["train_batches"])
        a, b = train_steps(batch)
        t_ours, t_theirs = timed_pair(a, b, s["steps"], s["warmup"])
        for row, name, step, sec in (("d1", "ssast", a, t_ours), ("d2", "transformers", b, t_theirs)):
            for m in models.values():
                m.zero_grad(set_to_none=True)  # the step's gradients count as its own
            gb = own_peak_gb(device, step, tensor_bytes(models[name], opts[name]))
            emit({"row": row, "batch": batch, "clips_per_s": batch / sec, "peak_gb": gb,
                  "note": geometry + (f"; {t_theirs / t_ours:.2f}x transformers" if name == "ssast" else "")
                  + (f"; batch {too_big[-1]} did not fit" if too_big else "")})
    except Exception as e:  # noqa: BLE001 - the rows carry the error, inference still runs
        for row in ("d1", "d2"):
            emit(error_row(row, e))
    finally:
        opts = None
        for m in models.values():
            m.zero_grad(set_to_none=True)
        free_memory()

    # Inference: the same weights in eval mode (ours may have moved in training: copy them again).
    try:
        ours.eval(), theirs.eval()
        theirs.load_state_dict(to_hf_state_dict(ours), strict=True)

        def infer(name, x):
            def run():
                with torch.inference_mode(), amp():
                    forward[name](x)
            return run

        def fits(b):
            x, _ = inputs(b)
            infer("ssast", x)(), infer("transformers", x)()

        batch, too_big = largest_batch(fits, s["infer_batches"])
        x, _ = inputs(batch)
        a, b = infer("ssast", x), infer("transformers", x)
        t_ours, t_theirs = timed_pair(a, b, s["steps"], s["warmup"])
        for row, name, fn, sec in (("d3", "ssast", a, t_ours), ("d4", "transformers", b, t_theirs)):
            gb = own_peak_gb(device, fn, tensor_bytes(models[name]))
            emit({"row": row, "batch": batch, "clips_per_s": batch / sec, "peak_gb": gb,
                  "note": geometry + (f"; {t_theirs / t_ours:.2f}x transformers" if name == "ssast" else "")
                  + (f"; batch {too_big[-1]} did not fit" if too_big else "")})
    except Exception as e:  # noqa: BLE001
        for row in ("d3", "d4"):
            emit(error_row(row, e))


# ----------------------------------------------------------------------------- a part's process

def error_row(row: str, e: BaseException | str, log: str = "") -> dict:
    msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    out = {"row": row, "error": msg.strip()}
    if not isinstance(e, str):
        out["traceback"] = "".join(traceback.format_exception(e))[-4000:]
    if log:
        out["log"] = log
    return out


def child(a) -> int:
    """Run one part in this process; its rows go to ``a.result``, one JSON line each."""
    import torch

    sys.path.insert(0, str(HERE))  # the other benchmarks' helpers
    device = torch.device("cpu" if a.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch; run with --cpu for the CPU check")
    size = SIZES["cpu" if a.cpu else "gpu"][a.child]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    failed = False

    def emit(row: dict) -> None:
        nonlocal failed
        failed |= "error" in row
        row.setdefault("device", device_name(device))
        with open(a.result, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"gpu_check: {row['row']} {'error: ' + row['error'] if 'error' in row else 'done'}", file=sys.stderr,
              flush=True)

    fn = globals()[f"part_{a.child}"]
    kwargs = {"time_scale": a.time_scale} if a.child == "resume" else {}
    try:
        fn(size, device, work, emit, **kwargs)
    except Exception as e:  # noqa: BLE001 - every row of the part not yet written carries the error
        done = {json.loads(line)["row"] for line in Path(a.result).read_text().splitlines()} \
            if Path(a.result).exists() else set()
        for row in PARTS[a.child][0]:
            if row not in done:
                emit(error_row(row, e))
    return 1 if failed else 0


# ----------------------------------------------------------------------------- the driver

def run_part(name: str, a, work: Path) -> list[dict]:
    rows, needs, limits = PARTS[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"not installed for {sys.executable}: {', '.join(missing)}"
        return [error_row(r, msg) for r in rows]
    result, log = work / f"{name}.jsonl", work / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result),
           "--work", str(work / name), "--time-scale", str(a.time_scale)] + (["--cpu"] if a.cpu else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if a.cpu:
        # One thread per process: tiny steps on two threads stall for tenths of a second whenever
        # another process takes a core of a shared machine.
        env["OMP_NUM_THREADS"] = "1"
    limit = limits[1 if a.cpu else 0] * a.time_scale
    t0 = time.time()
    print(f"gpu_check: {name} (rows {', '.join(rows)}; at most {limit:g} s)", file=sys.stderr, flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            why = f"the part's process exited with {code}" if code else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why = f"timed out after {limit:g} s"
    got = {}
    if result.exists():
        for line in result.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            got[r["row"]] = r
    tail = _tail(log)
    if why and tail:
        why += ": " + tail.splitlines()[-1]
    for r in rows:
        if r not in got:
            got[r] = error_row(r, why or "the part wrote no row", tail)
        elif "error" in got[r]:
            got[r].setdefault("log", tail)
    print(f"gpu_check: {name} took {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return [got[r] for r in rows]


def fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def table(rows: list[dict], header: str) -> str:
    cols = ("row", "what", "batch", "clips/s", "TFLOP/s", "of bf16 peak", "peak mem GB", "notes")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if "error" in r:
            cells = [r["row"], TITLES[r["row"]], "-", "-", "-", "-", "-",
                     "FAILED: " + r["error"].splitlines()[0][:160]]
        else:
            flops = "tflops" in r
            cells = [r["row"], TITLES[r["row"]], str(r["batch"]), fmt(r["clips_per_s"], ".2f"),
                     fmt(r.get("tflops"), ".3g") if flops else "-",
                     fmt(r.get("peak_fraction"), ".1%") if flops else "-", fmt(r["peak_gb"], ".2f"), r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def driver(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for name in a.parts:
            for r in run_part(name, a, work):
                results[r["row"]] = r
    rows = [results[r] for r in ROW_ORDER if r in results]
    devices = sorted({r["device"] for r in rows if "device" in r})
    try:
        import torch
        versions = f"torch {torch.__version__}"
    except ImportError:
        versions = "torch not installed"
    header = (f"ssast GPU check ({'--cpu, tiny sizes' if a.cpu else 'GPU'}): {', '.join(devices) or 'no device'}; "
              f"{versions}, Python {platform.python_version()}; "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}, {time.time() - t0:.0f} s")
    text = table(rows, header)
    print(text, end="")
    (out / "gpu_check.txt").write_text(text, encoding="utf-8")
    info = {"header": header, "cpu": a.cpu, "python": sys.executable, "seconds": time.time() - t0,
            "sizes": SIZES["cpu" if a.cpu else "gpu"], "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
    failed = [r["row"] for r in rows if "error" in r]
    if failed:
        print(f"gpu_check: failed rows: {', '.join(failed)} (errors and logs in {out / 'gpu_check.json'})",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU with tiny sizes (a test of the check itself)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for gpu_check.txt and gpu_check.json "
                                                                 "(default: benchmarks/results)")
    p.add_argument("--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS), help="default: all")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every part's time limit (default 1)")
    p.add_argument("--child", choices=tuple(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    return child(a) if a.child else driver(a)


if __name__ == "__main__":
    raise SystemExit(main())
