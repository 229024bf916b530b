"""Clips/s and peak memory of one pretraining step on the DeepSpeed engine, with and without
activation checkpointing.

The step is the one ``ssast pretrain`` runs: the joint objective (``nce + 10 * mse``, one encoder
pass) at the released setting (128 mel bins x 1024 frames, 16x16 patches, 400 masked), DeepSpeed
ZeRO stage 2 in one process (bf16 on a GPU that has it, fp32 on CPU), Adam. Input features are
random (data loading is measured by benchmarks/data_loading.py). Each configuration runs in its
own process, so that the peak resident memory on CPU is that configuration's; on a GPU the peak
is ``torch.cuda.max_memory_allocated``, and the model FLOPs per step (from the geometry: forward
plus twice that for the backward, recomputation not counted) give the fraction of the GPU's
peak dense FLOP/s reached.

    python benchmarks/pretrain_memory.py                              # tiny and base, batch 2
    python benchmarks/pretrain_memory.py --sizes tiny --batch 8 --steps 3 --json out.json
    python benchmarks/pretrain_memory.py --sizes base --batch 1 --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) by device name, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
               "H100": 756.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "V100": 125.0}
# fp32 peaks without tensor cores (TFLOP/s), for fp32 runs.
PEAK_TFLOPS_FP32 = {"H200": 67.0, "H100 SXM": 67.0, "H100 80GB HBM3": 67.0, "H100 NVL": 60.0, "H100 PCIe": 51.0,
                    "H100": 51.0, "A100": 19.5, "L40S": 91.6, "A10G": 31.2, "V100": 15.7}


def step_flops(cfg, batch: int, mask_patch: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) of the joint objective.

    Per clip: the patch projection, ``depth`` blocks over ``L = prefix + patches`` tokens of width
    ``D`` (QKV, attention scores and mixing, output projection, a 4x MLP: ``24 L D^2 + 4 L^2 D``),
    the two prediction heads on the ``M`` masked tokens and the InfoNCE similarity matrix.
    A multiply-add counts as two FLOPs.
    """
    d, n, m, k = cfg.embed_dim, cfg.num_patches, mask_patch, cfg.patch_dim
    L = cfg.num_prefix_tokens + n
    hidden = cfg.mlp_ratio * d
    embed = 2 * n * k * d
    block = 2 * L * d * 3 * d + 2 * 2 * L * L * d + 2 * L * d * d + 2 * 2 * L * d * hidden
    heads = 2 * (2 * m * (d * d + d * k))
    nce = 2 * m * m * k
    forward = embed + cfg.depth * block + heads + nce
    return 3.0 * forward * batch


def _peak_tflops(name: str, precision: str) -> float | None:
    table = PEAK_TFLOPS_FP32 if precision == "fp32" else PEAK_TFLOPS
    for key in sorted(table, key=len, reverse=True):
        if key in name:
            return table[key]
    return None


def worker(a) -> dict:
    """One configuration in this process: build the engine, time the steps, report."""
    import resource

    import torch

    if a.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    from ssast import ASTModel
    from ssast.config import ModelConfig
    from ssast.engine.config import load_deepspeed_config, precision
    from ssast.engine.distributed import setup
    from ssast.engine.objective import MaskedPatchObjective

    if a.threads:
        torch.set_num_threads(a.threads)
    dist = setup(a.device)
    cfg = ModelConfig.from_size(a.size, fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=128,
                                input_tdim=a.frames, stage="pretrain")
    torch.manual_seed(0)
    model = ASTModel(config=cfg)
    model.set_grad_checkpointing(a.grad_checkpointing)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999))
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    ds = load_deepspeed_config(a.deepspeed_config, a.batch, dist.device.type)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    prec = precision(ds)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
    objective = MaskedPatchObjective(cfg, "joint", mask_patch=a.mask_patch, cluster=True)
    g = torch.Generator(device=dist.device).manual_seed(0)
    x = torch.randn(a.batch, a.frames, 128, device=dist.device).to(dtype)
    cuda = dist.device.type == "cuda"

    def step():
        loss, _ = objective.train_step(engine, x, {}, g)
        engine.backward(loss)
        engine.step()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    out = {"size": a.size, "grad_checkpointing": a.grad_checkpointing, "batch": a.batch, "precision": prec,
           "seconds_per_step": sec, "clips_per_second": a.batch / sec,
           "params_m": sum(p.numel() for p in engine.module.parameters()) / 1e6}
    flops = step_flops(cfg, a.batch, a.mask_patch)
    out["model_tflops_per_step"] = flops / 1e12
    out["achieved_tflops"] = flops / sec / 1e12
    if cuda:
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak = a.peak_tflops or _peak_tflops(name, prec)
        out["device"] = name
        if peak:
            out["peak_tflops"] = peak
            out["flops_fraction"] = out["achieved_tflops"] / peak
    else:
        out["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
        out["device"] = platform.processor() or platform.machine()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mask-patch", type=int, default=400)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when a GPU is visible")
    p.add_argument("--deepspeed-config", help="engine settings (default: ZeRO 2, bf16 on GPUs that have it)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak FLOP/s in TFLOP/s (default: from its name)")
    p.add_argument("--checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"])
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return

    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"pretraining step on the DeepSpeed engine: batch {a.batch}, {a.frames} frames x 128 bins, 16x16 patches, "
          f"{a.mask_patch} masked, joint objective in one pass; {device}, torch {torch.__version__}")
    results = []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for size in a.sizes:
        for ck in a.checkpointing:
            cmd = [sys.executable, __file__, "--worker", "--size", size, "--batch", str(a.batch), "--steps",
                   str(a.steps), "--warmup", str(a.warmup), "--frames", str(a.frames), "--mask-patch", str(a.mask_patch),
                   "--device", device, "--grad-checkpointing" if ck == "on" else "--no-grad-checkpointing"]
            for flag, value in (("--threads", a.threads), ("--deepspeed-config", a.deepspeed_config),
                                ("--peak-tflops", a.peak_tflops)):
                if value is not None:
                    cmd += [flag, str(value)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"  {size} checkpointing {ck}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(line[len("RESULT "):])
            results.append(r)
            frac = f"  {100 * r['flops_fraction']:5.1f}% of peak" if "flops_fraction" in r else ""
            print(f"  {size:5s} checkpointing {ck:3s} {r['precision']}: {r['seconds_per_step']:7.3f} s/step  "
                  f"{r['clips_per_second']:7.2f} clips/s  peak memory {r['peak_memory_gb']:6.2f} GB  "
                  f"{r['achieved_tflops']:7.2f} TFLOP/s{frac}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
