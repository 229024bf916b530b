"""Time one joint pretraining step (forward, backward, Adam step) at the released setting.

Released setting: 128 mel bins x 1024 frames, 16x16 patches (8 x 64 = 512 patches), 400 masked
per clip, loss ``nce + 10 * mse``. Schedules compared side by side in one run:

- ``two-pass fp32``: the 2021 recipe, one encoder pass for the classification objective and a
  second one, with another mask, for the reconstruction objective;
- ``single-pass fp32``: both objectives from one encoder pass over one masked input;
- ``single-pass bf16``: the same under ``torch.autocast(dtype=torch.bfloat16)``;
- with ``--compile``, also both single-pass steps with the encoder's blocks compiled
  (:func:`ssast.device.compile_encoder`; compilation is not timed).

    python benchmarks/pretrain_step.py                      # tiny and base, batch 2 and 8
    python benchmarks/pretrain_step.py --sizes tiny --batch 8 --steps 5 --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Waiting threads that sleep, as importing ssast sets (ssast/threads.py); here torch loads first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssast, not an installed one

from ssast import ASTModel  # noqa: E402
from ssast.device import compile_encoder  # noqa: E402

MODES = ("two-pass fp32", "single-pass fp32", "single-pass bf16")
COMPILED = ("single-pass fp32 compiled", "single-pass bf16 compiled")


def make_step(model: ASTModel, opt: torch.optim.Optimizer, x: torch.Tensor, mode: str, mask_patch: int, g):
    device_type = x.device.type
    amp = torch.autocast(device_type, dtype=torch.bfloat16) if "bf16" in mode else contextlib.nullcontext()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with amp:
            if mode.startswith("two-pass"):
                _, nce = model(x, "pretrain_mpc", mask_patch=mask_patch, generator=g)
                mse = model(x, "pretrain_mpg", mask_patch=mask_patch, generator=g)
            else:
                _, nce, mse = model(x, "pretrain_joint", mask_patch=mask_patch, generator=g)
            loss = nce + 10 * mse
        loss.backward()
        opt.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def bench(size: str, batch: int, steps: int, warmup: int, device: str, mask_patch: int, frames: int,
          grad_ckpt: bool, compiled: bool) -> dict:
    x = torch.randn(batch, frames, 128, device=device, generator=torch.Generator(device).manual_seed(1))
    out = {}
    models = {}
    for mode in MODES + (COMPILED if compiled else ()):
        key = "compiled" if mode.endswith("compiled") else "eager"
        if key not in models:
            torch.manual_seed(0)  # the same initial weights for both
            model = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=128, input_tdim=frames,
                             model_size=size, pretrain_stage=True).to(device)
            model.set_grad_checkpointing(grad_ckpt)
            compile_encoder(model, key == "compiled")
            # The official optimizer settings; PyTorch's fused Adam kernel (CPU and GPU).
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999), fused=True)
            models[key] = model, opt
        model, opt = models[key]
        g = torch.Generator(device=device).manual_seed(0)
        step = make_step(model, opt, x, mode, mask_patch, g)
        t0 = time.perf_counter()
        for _ in range(warmup + (2 if key == "compiled" else 0)):  # compiled: forward and backward graphs
            step()
        first = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[mode] = {"seconds_per_step": med, "clips_per_second": batch / med, "min_seconds": min(times)}
        if key == "compiled":
            out[mode]["warmup_seconds"] = first
        print(f"  {size:5s} batch {batch:2d}  {mode:26s} {med:8.3f} s/step  {batch / med:7.2f} clips/s", flush=True)
    base = out["two-pass fp32"]["seconds_per_step"]
    for r in out.values():
        r["speedup_vs_two_pass_fp32"] = base / r["seconds_per_step"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--steps", type=int, default=3, help="timed steps per schedule (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mask-patch", type=int, default=400)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also time the single-pass steps with compiled blocks")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    info = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
        "frames": args.frames, "mask_patch": args.mask_patch, "grad_checkpointing": args.grad_checkpointing,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_before": os.getloadavg(),
    }
    print(f"pretraining step, batch {' and '.join(map(str, args.batch))}, {args.frames} frames x 128 bins, 16x16 "
          f"patches, {args.mask_patch} masked; {args.device}, {info['threads']} threads (OMP_WAIT_POLICY "
          f"{info['omp_wait_policy']}), torch {torch.__version__}; "
          f"load average {' '.join(f'{v:.2f}' for v in info['load_average_before'])}")
    results = {}
    for size in args.sizes:
        for batch in args.batch:
            results[f"{size} batch {batch}"] = bench(size, batch, args.steps, args.warmup, args.device,
                                                     args.mask_patch, args.frames, args.grad_checkpointing,
                                                     args.compile)
    info["load_average_after"] = os.getloadavg()
    modes = MODES + (COMPILED if args.compile else ())
    print("\nspeed-up over the two-pass fp32 step:")
    print(f"  {'':13s} " + " ".join(f"{m:>26s}" for m in modes))
    for name, r in results.items():
        print(f"  {name:13s} " + " ".join(f"{r[m]['speedup_vs_two_pass_fp32']:25.2f}x" for m in modes))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in info['load_average_after'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
