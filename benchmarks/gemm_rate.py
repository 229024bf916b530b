"""Matrix product rate of this CPU in fp32 and bf16: the ceiling of a pretraining step's products.

Times ``torch.matmul`` on one thread (``--threads``) at the shapes of the tiny model's step (one
clip of 514 tokens, width 192, MLP 768, 3 heads of 64) and on a square 256 product, in fp32 and in
bf16, and prints GFLOP/s and the bf16/fp32 ratio. A single bf16 pass against the 2021 code's two
fp32 passes gains at most twice that ratio in its products; ``benchmarks/pretrain_step.py
--breakdown`` shows how near the step's products come.

    python benchmarks/gemm_rate.py
    python benchmarks/gemm_rate.py --threads 2 --seconds 2
"""
from __future__ import annotations

import argparse
import time

import torch

# (name, batch, m, k, n): out (batch, m, n) = (batch, m, k) @ (batch, k, n)
SHAPES = (
    ("square 256", 1, 256, 256, 256),
    ("qkv forward", 1, 514, 192, 576),
    ("fc1 forward", 1, 514, 192, 768),
    ("fc2 forward", 1, 514, 768, 192),
    ("fc1 weight gradient", 1, 768, 514, 192),
    ("attention scores", 3, 514, 64, 514),
    ("attention weighted sum", 3, 514, 514, 64),
)


def rate(b: int, m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of (b, m, k) @ (b, k, n) in ``dtype``, repeated for about ``seconds``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, m, k, generator=g).to(dtype)
    y = torch.randn(b, k, n, generator=g).to(dtype)
    for _ in range(10):
        torch.matmul(x, y)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            torch.matmul(x, y)
        reps += 20
    return 2 * b * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0, help="time per shape and type")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"matrix products, {args.threads} thread(s), torch {torch.__version__}")
    print(f"  {'shape':24s} {'(batch, m, k, n)':>22s} {'fp32 GFLOP/s':>13s} {'bf16 GFLOP/s':>13s} {'bf16/fp32':>10s}")
    for name, b, m, k, n in SHAPES:
        fp32 = rate(b, m, k, n, torch.float32, args.seconds)
        bf16 = rate(b, m, k, n, torch.bfloat16, args.seconds)
        print(f"  {name:24s} {str((b, m, k, n)):>22s} {fp32:13.1f} {bf16:13.1f} {bf16 / fp32:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
