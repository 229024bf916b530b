"""Time one joint pretraining step (forward, backward, Adam step) at the released setting.

Released setting: 128 mel bins x 1024 frames, 16x16 patches (8 x 64 = 512 patches), 400 masked
per clip, loss ``nce + 10 * mse``. Schedules compared side by side in one run:

- ``two-pass fp32``: the 2021 recipe on this package's model, one encoder pass for the
  classification objective and a second one, with another mask, for the reconstruction objective;
- ``single-pass fp32``: both objectives from one encoder pass over one masked input;
- ``single-pass bf16``: the same under ``torch.autocast(dtype=torch.bfloat16)``;
- with ``--compile``, also both single-pass steps with the encoder's blocks compiled
  (:func:`ssast.device.compile_encoder`; compilation is not timed);
- with ``--official DIR`` (a checkout of github.com/YuanGongND/ssast), also the 2021 code's own
  two-pass fp32 step (``2021 code``: its ``ASTModel``, its ``pretrain_mpc`` and ``pretrain_mpg``
  calls and its Adam settings, as its ``traintest_mask.py`` runs them), in a worker process with
  timm 0.4.5 on its path (``--official-timm``; ``scripts/install_reference.sh`` puts it in
  ``.reference/timm045``), since this package needs a newer timm.

``--breakdown`` then profiles a few more rounds (3 by default) and splits each schedule's step into
the linear layers' matrix products, attention and the rest (``benchmarks/step_profile.py``; the
median of each part), with each part's speed-up over the 2021 code's (or, without ``--official``,
over the two-pass step's).

The schedules take turns, one step each per round, so that a machine that slows down or speeds
up during the run (shared cores, frequency changes) moves every schedule's figures alike; the
median of the timed rounds is reported.

    python benchmarks/pretrain_step.py                      # tiny and base, batch 2 and 8
    python benchmarks/pretrain_step.py --sizes tiny --official ~/src/ssast --json out.json
    python benchmarks/pretrain_step.py --sizes tiny --official ~/src/ssast --breakdown
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Waiting threads that sleep, as importing ssast sets (ssast/threads.py); here torch loads first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssast, not an installed one

from ssast import ASTModel  # noqa: E402
from ssast.device import compile_encoder  # noqa: E402
from step_profile import PARTS, profile_step  # noqa: E402  (benchmarks/step_profile.py, beside this script)

MODES = ("two-pass fp32", "single-pass fp32", "single-pass bf16")
COMPILED = ("single-pass fp32 compiled", "single-pass bf16 compiled")
OFFICIAL = "2021 code two-pass fp32"
TIMM_REFERENCE = Path(__file__).resolve().parents[1] / ".reference" / "timm045"  # scripts/install_reference.sh


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


class OfficialStep:
    """The 2021 code's step, run by ``benchmarks/official_step.py`` in a worker process.

    Calling it runs one step there and returns the seconds the worker timed (the pipe's latency
    is not counted)."""

    def __init__(self, src: str, timm_dir: str, size: str, batch: int, frames: int, mask_patch: int,
                 threads: int | None):
        import subprocess

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (timm_dir, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, str(Path(__file__).with_name("official_step.py")), "--src", src, "--size", size,
               "--batch", str(batch), "--frames", str(frames), "--mask-patch", str(mask_patch)]
        if threads:
            cmd += ["--threads", str(threads)]
        # The worker's stderr goes to a file, read when it fails: a pipe nobody reads while the
        # steps run would block a worker that warns at length.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready"):
            self.close()
            raise RuntimeError(f"the 2021 code's worker did not start (--official {src}, timm from "
                               f"{timm_dir or 'the environment'}):\n{self.errors()}")
        self.timm = ready.split()[-1]

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().strip()

    def _ask(self, command: str, parse, what: str):
        """Send one command line; parse the worker's answer line, or stop it and show its errors."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        try:
            return parse(line)
        except ValueError:
            self.close()
            raise RuntimeError(f"the 2021 code's {what} failed:\n{self.errors()}") from None

    def __call__(self) -> float:
        return self._ask("step", float, "step")

    def profile(self) -> dict:
        """One step there under the profiler: its parts (benchmarks/step_profile.py)."""
        return self._ask("profile", json.loads, "profiled step")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def bench(size: str, batch: int, steps: int, warmup: int, device: str, mask_patch: int, frames: int,
          grad_ckpt: bool, compiled: bool, official: dict | None = None, breakdown: int = 0) -> dict:
    """Median seconds per step of every schedule, the schedules taking turns step by step."""
    x = torch.randn(batch, frames, 128, device=device, generator=torch.Generator(device).manual_seed(1))
    models, schedules, warm = {}, {}, {}
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
        schedules[mode] = make_step(model, opt, x, mode, mask_patch, torch.Generator(device=device).manual_seed(0))
        if key == "compiled":  # compilation: the forward and the backward graphs, not timed
            t0 = time.perf_counter()
            for _ in range(2):
                schedules[mode]()
            warm[mode] = time.perf_counter() - t0
    worker = None
    if official:
        worker = OfficialStep(official["src"], official["timm"], size, batch, frames, mask_patch, official["threads"])
        schedules[OFFICIAL] = worker
    try:
        times = {mode: [] for mode in schedules}
        for r in range(warmup + steps):
            for mode, step in schedules.items():
                if isinstance(step, OfficialStep):
                    t = step()
                else:
                    t0 = time.perf_counter()
                    step()
                    t = time.perf_counter() - t0
                if r >= warmup:
                    times[mode].append(t)
        profiled = {mode: [] for mode in schedules} if breakdown else {}
        for _ in range(breakdown):  # profiled steps, in turns as well
            for mode, step in schedules.items():
                profiled[mode].append(step.profile() if isinstance(step, OfficialStep) else profile_step(step))
        # each part's median over the profiled steps
        parts = {mode: {k: statistics.median(p[k] for p in ps) for k in ps[0]} for mode, ps in profiled.items()}
    finally:
        if worker is not None:
            worker.close()
    out = {}
    for mode, ts in times.items():
        med = statistics.median(ts)
        out[mode] = {"seconds_per_step": med, "clips_per_second": batch / med, "min_seconds": min(ts),
                     "max_seconds": max(ts)}
        if mode in warm:
            out[mode]["warmup_seconds"] = warm[mode]
        if mode == OFFICIAL:
            out[mode]["timm"] = worker.timm
        print(f"  {size:5s} batch {batch:2d}  {mode:26s} {med:8.3f} s/step  {batch / med:7.2f} clips/s"
              f"  (range {min(ts):.3f} to {max(ts):.3f})", flush=True)
    for ref, field in ((MODES[0], "speedup_vs_two_pass_fp32"), (OFFICIAL, "speedup_vs_2021_code")):
        if ref in out:
            base = out[ref]["seconds_per_step"]
            for r in out.values():
                r[field] = base / r["seconds_per_step"]
    if parts:
        ref = OFFICIAL if OFFICIAL in parts else MODES[0]
        print(f"  profiled steps, median of {breakdown} each (linear layers' products + attention + the rest; "
              f"each part's speed-up over the {ref} step's):")
        for mode, pr in parts.items():
            ratio = {k: parts[ref][k] / pr[k] if pr[k] > 0 else None for k in PARTS}  # None: no such part
            pr["speedup_vs_" + ("2021_code" if ref == OFFICIAL else "two_pass_fp32")] = ratio
            out[mode]["breakdown"] = pr
            print(f"  {size:5s} batch {batch:2d}  {mode:26s} {pr['seconds']:7.3f} s = "
                  + " + ".join(f"{pr[k]:.3f} ({100 * pr[k] / pr['seconds']:.0f}%)" for k in PARTS)
                  + "   " + " ".join("-" if ratio[k] is None else f"{ratio[k]:.2f}x" for k in PARTS), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--steps", type=int, default=7, help="timed rounds, one step of each schedule per round "
                   "(median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mask-patch", type=int, default=400)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also time the single-pass steps with compiled blocks")
    p.add_argument("--official", metavar="DIR",
                   help="also time the 2021 code's two-pass step from this checkout of github.com/YuanGongND/ssast")
    p.add_argument("--official-timm", metavar="DIR", default=None,
                   help=f"timm 0.4.5 for the 2021 code (default: {TIMM_REFERENCE.relative_to(TIMM_REFERENCE.parents[1])}"
                        " from scripts/install_reference.sh; '' for the environment's timm)")
    p.add_argument("--breakdown", type=int, nargs="?", const=3, default=0, metavar="N",
                   help="then profile N more rounds (3 if N is not given): each schedule's seconds in the linear "
                        "layers' products, in attention and in the rest, median per part (CPU; "
                        "benchmarks/step_profile.py)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    official = None
    if args.official:
        timm_dir = str(TIMM_REFERENCE) if args.official_timm is None else args.official_timm
        if timm_dir and not Path(timm_dir, "timm").is_dir():
            p.error(f"--official-timm {timm_dir}: no timm package there; the 2021 code needs timm 0.4.5 "
                    "(bash scripts/install_reference.sh installs it in .reference/timm045)")
        official = {"src": args.official, "timm": timm_dir, "threads": args.threads}
    if args.breakdown and args.device != "cpu":
        p.error("--breakdown splits a step by its CPU kernels; run it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)

    info = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
        "frames": args.frames, "mask_patch": args.mask_patch, "grad_checkpointing": args.grad_checkpointing,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_before": os.getloadavg(),
        "timing": f"schedules take turns, one step each per round; {args.warmup} untimed rounds, median of "
                  f"{args.steps}", "official": args.official,
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
                                                     args.compile, official, args.breakdown)
    info["load_average_after"] = os.getloadavg()
    modes = MODES + (COMPILED if args.compile else ()) + ((OFFICIAL,) if official else ())
    for ref, field in ((MODES[0], "speedup_vs_two_pass_fp32"), (OFFICIAL, "speedup_vs_2021_code")):
        if ref not in modes:
            continue
        print(f"\nspeed-up over the {ref} step:")
        print(f"  {'':13s} " + " ".join(f"{m:>26s}" for m in modes))
        for name, r in results.items():
            print(f"  {name:13s} " + " ".join(f"{r[m][field]:25.2f}x" for m in modes))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in info['load_average_after'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
