"""benchmarks/gemm_rate.py: every shape of the tiny model's step is timed in both types."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gemm_rate.py"


def test_every_shape_gets_both_rates():
    p = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "0.02"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.rstrip().endswith("x") and "(" in line]
    assert len(rows) == 7, p.stdout
    for row in rows:
        fp32, bf16, ratio = (float(v) for v in re.findall(r"(\d+\.\d+)", row.split(")")[-1]))
        assert fp32 > 0 and bf16 > 0
        assert abs(bf16 / fp32 - ratio) <= 0.01 + 0.01 * ratio  # the ratio printed is of the rates printed
    assert "(3, 514, 64, 514)" in p.stdout  # attention scores: 3 heads of 64 over 514 tokens
