"""benchmarks/gpu_check.sh: the whole check on the CPU (tiny sizes), its batch search, and its
failing parts (a missing package, a part past its time limit) leaving the other rows standing."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _cells(text: str) -> dict[str, list[str]]:
    """The table's rows by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _number(cell: str) -> float:
    return float(cell)  # raises on "-", "n/a" or an error


@needs_deepspeed
@needs_transformers
def test_cpu_check_fills_every_row(tmp_path, gpu_check):
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    text = (tmp_path / "gpu_check.txt").read_text()
    assert p.stdout.endswith(text)  # the printed table is the written one
    rows = _cells(text)
    assert list(rows) == list(gpu_check.ROW_ORDER)
    for name, cells in rows.items():
        row, what, batch, clips, tflops, frac, mem, note = cells
        assert int(batch) >= 1 and _number(clips) > 0 and _number(mem) > 0, cells
        if name.startswith("b"):
            assert _number(tflops) > 0 and frac == "n/a", cells  # no bf16 peak known for a CPU
    info = json.loads((tmp_path / "gpu_check.json").read_text())
    by_row = {r["row"]: r for r in info["rows"]}
    assert not [r for r in info["rows"] if "error" in r]

    # a: killed past a checkpoint, resumed from that checkpoint, run to its last step.
    a = by_row["a"]
    resumed = int(re.search(r"resumed from step (\d+)", rows["a"][-1]).group(1))
    finished = int(re.search(r"finished at step (\d+)", rows["a"][-1]).group(1))
    assert resumed == a["resumed_from"] == a["saved"] > 0
    assert a["killed_at"] > resumed and finished == a["final_step"] > a["killed_at"]
    # b: the same FLOPs per clip eager and compiled; two passes cost more than one.
    b = by_row
    assert b["b1"]["flops_per_clip"] == pytest.approx(b["b2"]["flops_per_clip"])
    assert b["b3"]["flops_per_clip"] == pytest.approx(b["b4"]["flops_per_clip"])
    assert b["b3"]["flops_per_clip"] > 1.2 * b["b1"]["flops_per_clip"]
    assert b["b2"]["compiled"] and b["b4"]["compiled"]  # the blocks ran inside torch.compile


def test_largest_batch_steps_down_on_out_of_memory(gpu_check):
    tried = []

    def try_batch(b):
        tried.append(b)
        if b > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert gpu_check.largest_batch(try_batch, (16, 8, 4, 2)) == (4, [16, 8])
    assert tried == [16, 8, 4]
    with pytest.raises(RuntimeError, match="no batch fits.*16, 8"):
        gpu_check.largest_batch(lambda b: try_batch(99), (16, 8))

    def broken(b):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        gpu_check.largest_batch(broken, (16, 8))


def test_failing_parts_leave_the_other_rows(tmp_path, gpu_check, monkeypatch):
    """A part whose package is missing and a part past its time limit fail in their rows; the
    fbank row is still measured, the table still written, and the exit status is 1."""
    monkeypatch.setitem(gpu_check.PARTS, "resume", (("a",), ("torch", "no_such_package_here"), (130, 220)))
    monkeypatch.setitem(gpu_check.PARTS, "pretrain", (("b1", "b3", "b2", "b4"), ("torch",), (0.5, 0.5)))
    code = gpu_check.main(["--cpu", "--out", str(tmp_path), "--parts", "resume", "pretrain", "fbank"])
    assert code == 1
    rows = _cells((tmp_path / "gpu_check.txt").read_text())
    assert list(rows) == ["a", "b1", "b2", "b3", "b4", "c"]
    assert "FAILED: not installed" in rows["a"][-1] and "no_such_package_here" in rows["a"][-1]
    for name in ("b1", "b2", "b3", "b4"):
        assert "FAILED: timed out after 0.5 s" in rows[name][-1]
    assert _number(rows["c"][3]) > 0 and "FAILED" not in rows["c"][-1]
    info = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["row"] for r in info["rows"] if "error" in r] == ["a", "b1", "b2", "b3", "b4"]


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12),
    ("Some Other GPU", None),
])
def test_peak_bf16_flops_by_device_name(gpu_check, name, peak):
    assert gpu_check.peak_bf16_flops(name) == peak
