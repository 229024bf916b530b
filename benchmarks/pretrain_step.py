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

``--ranks N`` also times both single-pass steps data parallel over N processes on this machine, the
threads split between them (``single-pass fp32 N ranks``, ``single-pass bf16 N ranks``;
``benchmarks/ranked_step.py``): one rank per share of the cores, as ``torchrun --nproc-per-node N``
starts the trainer's ranks on a CPU, each stepping on its share of the same batch with the gradients
averaged by DDP over gloo (the trainer averages them through DeepSpeed's ZeRO), so the update is
the whole batch's.

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
    python benchmarks/pretrain_step.py --sizes tiny --official ~/src/ssast --ranks 2
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
RANKED_MODES = MODES[1:]  # with --ranks N, also over N processes (benchmarks/ranked_step.py)
OFFICIAL = "2021 code two-pass fp32"
TIMM_REFERENCE = Path(__file__).resolve().parents[1] / ".reference" / "timm045"  # scripts/install_reference.sh


def example_batch(batch: int, frames: int, device) -> torch.Tensor:
    """The input every schedule steps on (the same clips in every process)."""
    return torch.randn(batch, frames, 128, device=device, generator=torch.Generator(device).manual_seed(1))


def build_model(size: str, frames: int, device, grad_ckpt: bool = False, compiled: bool = False):
    """The pretraining model (the same initial weights on every call) and its optimizer."""
    torch.manual_seed(0)
    model = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=128, input_tdim=frames,
                     model_size=size, pretrain_stage=True).to(device)
    model.set_grad_checkpointing(grad_ckpt)
    compile_encoder(model, compiled)
    # The official optimizer settings; PyTorch's fused Adam kernel (CPU and GPU).
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999), fused=True)
    return model, opt


def make_step(model, opt: torch.optim.Optimizer, x: torch.Tensor, mode: str, mask_patch: int, g,
              masks: torch.Tensor | None = None):
    """One step of ``mode`` on ``x``; masks drawn with ``g``, or ``masks`` (B, M) on every step."""
    device_type = x.device.type
    amp = torch.autocast(device_type, dtype=torch.bfloat16) if "bf16" in mode else contextlib.nullcontext()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with amp:
            if mode.startswith("two-pass"):
                _, nce = model(x, "pretrain_mpc", mask_patch=mask_patch, generator=g)
                mse = model(x, "pretrain_mpg", mask_patch=mask_patch, generator=g)
            else:
                _, nce, mse = model(x, "pretrain_joint", mask_patch=mask_patch, mask_index=masks, generator=g)
            loss = nce + 10 * mse
        loss.backward()
        opt.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


class Workers:
    """Worker processes that each answer one line per command line (``official_step.py``,
    ``ranked_step.py``). Their stderr goes to files, read when one fails: a pipe nobody reads while
    the steps run would block a worker that warns at length."""

    def __init__(self, cmds: list[list[str]], env: dict, name: str, where: str = ""):
        import subprocess

        self.name, self.procs, self.stderr = name, [], []
        for cmd in cmds:
            self.stderr.append(tempfile.TemporaryFile(mode="w+"))
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=self.stderr[-1], text=True))
        self.ready = [proc.stdout.readline() for proc in self.procs]
        if not all(line.startswith("ready") for line in self.ready):
            self.close()
            raise RuntimeError(f"{name}'s worker did not start{where}:\n{self.errors()}")

    def errors(self) -> str:
        out = []
        for f in self.stderr:
            f.seek(0)
            out.append(f.read().strip())
        return "\n".join(e for e in out if e)

    def ask(self, command: str, parse, what: str) -> list:
        """Send one command line to every worker; parse each one's answer line, or stop them all
        and show their errors."""
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        lines = [proc.stdout.readline() for proc in self.procs]
        try:
            return [parse(line) for line in lines]
        except ValueError:
            self.close()
            raise RuntimeError(f"{self.name}'s {what} failed:\n{self.errors()}") from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
                proc.wait()


class OfficialStep:
    """The 2021 code's step, run by ``benchmarks/official_step.py`` in a worker process.

    Calling it runs one step there and returns the seconds the worker timed (the pipe's latency
    is not counted)."""

    def __init__(self, src: str, timm_dir: str, size: str, batch: int, frames: int, mask_patch: int,
                 threads: int | None):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (timm_dir, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, str(Path(__file__).with_name("official_step.py")), "--src", src, "--size", size,
               "--batch", str(batch), "--frames", str(frames), "--mask-patch", str(mask_patch)]
        if threads:
            cmd += ["--threads", str(threads)]
        self.worker = Workers([cmd], env, "the 2021 code",
                              f" (--official {src}, timm from {timm_dir or 'the environment'})")
        self.timm = self.worker.ready[0].split()[-1]

    def __call__(self) -> float:
        return self.worker.ask("step", float, "step")[0]

    def profile(self) -> dict:
        """One step there under the profiler: its parts (benchmarks/step_profile.py)."""
        return self.worker.ask("profile", json.loads, "profiled step")[0]

    def close(self) -> None:
        self.worker.close()


class RankedSteps:
    """The single-pass schedules data parallel over ``ranks`` worker processes
    (``benchmarks/ranked_step.py``), the threads split between them."""

    def __init__(self, ranks: int, threads: int, size: str, batch: int, frames: int, mask_patch: int):
        from ssast.engine.distributed import _free_port

        self.ranks, self.threads = ranks, max(1, threads // ranks)
        port = _free_port()
        cmds = [[sys.executable, str(Path(__file__).with_name("ranked_step.py")), "--rank", str(r), "--world",
                 str(ranks), "--port", str(port), "--size", size, "--batch", str(batch), "--frames", str(frames),
                 "--mask-patch", str(mask_patch), "--threads", str(self.threads)] for r in range(ranks)]
        self.worker = Workers(cmds, dict(os.environ), "the ranked step (benchmarks/ranked_step.py)",
                              f" ({ranks} ranks)")

    def name(self, mode: str) -> str:
        return f"{mode} {self.ranks} ranks"

    def schedule(self, mode: str):
        """``mode``'s step over the ranks: the seconds of the slowest rank (profile: its parts)."""
        def step() -> float:
            return max(self.worker.ask("step " + mode, float, mode + " step"))

        step.profile = lambda: max(self.worker.ask("profile " + mode, json.loads, mode + " profiled step"),
                                   key=lambda parts: parts["seconds"])
        return step

    def close(self) -> None:
        self.worker.close()


def bench(size: str, batch: int, steps: int, warmup: int, device: str, mask_patch: int, frames: int,
          grad_ckpt: bool, compiled: bool, official: dict | None = None, breakdown: int = 0, ranks: int = 1) -> dict:
    """Median seconds per step of every schedule, the schedules taking turns step by step."""
    x = example_batch(batch, frames, device)
    models, schedules, warm = {}, {}, {}
    for mode in MODES + (COMPILED if compiled else ()):
        key = "compiled" if mode.endswith("compiled") else "eager"
        if key not in models:
            models[key] = build_model(size, frames, device, grad_ckpt, key == "compiled")
        model, opt = models[key]
        schedules[mode] = make_step(model, opt, x, mode, mask_patch, torch.Generator(device=device).manual_seed(0))
        if key == "compiled":  # compilation: the forward and the backward graphs, not timed
            t0 = time.perf_counter()
            for _ in range(2):
                schedules[mode]()
            warm[mode] = time.perf_counter() - t0
    worker = ranked = None
    try:
        if ranks > 1:
            ranked = RankedSteps(ranks, torch.get_num_threads(), size, batch, frames, mask_patch)
            for mode in RANKED_MODES:
                schedules[ranked.name(mode)] = ranked.schedule(mode)
        if official:
            worker = OfficialStep(official["src"], official["timm"], size, batch, frames, mask_patch,
                                  official["threads"])
            schedules[OFFICIAL] = worker
        return _bench(size, batch, steps, warmup, schedules, warm, breakdown, worker)
    finally:
        for w in (worker, ranked):
            if w is not None:
                w.close()


def _bench(size, batch, steps, warmup, schedules, warm, breakdown, worker) -> dict:
    """Time the schedules in turns (and profile them with ``breakdown``); their figures."""
    times = {mode: [] for mode in schedules}
    for r in range(warmup + steps):
        for mode, step in schedules.items():
            if hasattr(step, "profile"):  # a worker's step: it times itself
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
            profiled[mode].append(step.profile() if hasattr(step, "profile") else profile_step(step))
    # each part's median over the profiled steps
    parts = {mode: {k: statistics.median(p[k] for p in ps) for k in ps[0]} for mode, ps in profiled.items()}
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
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="also time the single-pass steps data parallel over N processes on this machine, the "
                        "threads split between them (DDP over gloo; benchmarks/ranked_step.py; CPU)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    official = None
    if args.official:
        timm_dir = str(TIMM_REFERENCE) if args.official_timm is None else args.official_timm
        if timm_dir and not Path(timm_dir, "timm").is_dir():
            p.error(f"--official-timm {timm_dir}: no timm package there; the 2021 code needs timm 0.4.5 "
                    "(bash scripts/install_reference.sh installs it in .reference/timm045)")
        official = {"src": args.official, "timm": timm_dir, "threads": args.threads}
    if args.ranks > 1 and args.device != "cpu":
        p.error("--ranks runs its processes on the CPU; run it with --device cpu")
    for b in args.batch:
        if b % args.ranks:
            p.error(f"--ranks {args.ranks} does not split batch {b} into equal parts")
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
    if args.ranks > 1:
        info["ranks"] = {"processes": args.ranks, "threads_per_rank": max(1, info["threads"] // args.ranks),
                         "backend": "gloo"}
    print(f"pretraining step, batch {' and '.join(map(str, args.batch))}, {args.frames} frames x 128 bins, 16x16 "
          f"patches, {args.mask_patch} masked; {args.device}, {info['threads']} threads (OMP_WAIT_POLICY "
          f"{info['omp_wait_policy']}), torch {torch.__version__}; "
          f"load average {' '.join(f'{v:.2f}' for v in info['load_average_before'])}")
    results = {}
    for size in args.sizes:
        for batch in args.batch:
            results[f"{size} batch {batch}"] = bench(size, batch, args.steps, args.warmup, args.device,
                                                     args.mask_patch, args.frames, args.grad_checkpointing,
                                                     args.compile, official, args.breakdown, args.ranks)
    info["load_average_after"] = os.getloadavg()
    modes = list(next(iter(results.values())))
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
