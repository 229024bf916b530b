"""Inference clips/s: ssast's ASTModel against transformers' ASTForAudioClassification (SDPA).

Both run the same weights (ours exported with ``ssast.hf.export_hf``) on the same batch of
spectrograms, under ``torch.inference_mode``, in fp32 and in bf16 autocast, timed in turns
(median of ``--steps`` calls each).

    python benchmarks/inference.py --size base --batch 4 --frames 1024
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

from ssast import ASTModel


def timed_pair(fn_a, fn_b, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of each function, the two timed in turns so that both see the same machine."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times = ([], [])
    for _ in range(steps):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--labels", type=int, default=527)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from ssast.hf import export_hf
    from ssast.loading import from_model

    torch.manual_seed(0)
    ours = ASTModel(label_dim=args.labels, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=args.frames,
                    model_size=args.size, pretrain_stage=False)
    ours.config.default_task = "ft_cls"
    with tempfile.TemporaryDirectory() as d:
        export_hf(from_model(ours, multilabel=True), d)
        theirs = transformers.ASTForAudioClassification.from_pretrained(d, attn_implementation="sdpa")
    ours, theirs = ours.eval().to(args.device), theirs.eval().to(args.device)
    x = torch.randn(args.batch, args.frames, 128, device=args.device)
    print(f"inference, {args.size}, batch {args.batch}, {args.frames} frames, stride 10 "
          f"({ours.config.num_patches} patches); {args.device}, {torch.get_num_threads()} threads")
    for precision in ("fp32", "bf16"):
        amp = (torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())

        def run_ours():
            with torch.inference_mode(), amp:
                ours(x, "ft_cls")

        def run_theirs():
            with torch.inference_mode(), amp:
                theirs(input_values=x)

        t_ours, t_theirs = timed_pair(run_ours, run_theirs, args.steps, args.warmup)
        print(f"  {precision}: ssast {args.batch / t_ours:7.2f} clips/s   transformers {args.batch / t_theirs:7.2f} clips/s"
              f"   ratio {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
    main()
