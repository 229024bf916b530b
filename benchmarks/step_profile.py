"""Where a training step's time goes: linear layers' matrix products, attention, the rest.

Shared by ``benchmarks/pretrain_step.py --breakdown`` and its 2021-code worker
(``benchmarks/official_step.py``), so that both steps are split by the same rule. One step runs
under ``torch.profiler``; each ATen kernel's own time on the calling thread (the time the step
waits for it, its OpenMP threads included) goes to one part:

- ``linear``: ``mm`` and ``addmm``, the linear layers' products forward and backward (patch
  projection and heads included);
- ``attention``: batched products (``bmm``, ``baddbmm``), softmax forward and backward and the fused
  attention kernels, i.e. the attention's score and weighted-sum products and their softmax (the
  InfoNCE scores, one small batched product per step, count here too);
- ``rest``: everything else (casts, layer norms, GELU, additions, optimizer, masking, objectives,
  the dispatcher's own time).

Profiling costs the step a few percent; compare the parts, not the seconds, with the timed runs.
"""
from __future__ import annotations

from typing import Callable

LINEAR = frozenset({"aten::mm", "aten::addmm"})
ATTENTION = frozenset({
    "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_efficient_attention_backward", "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_backward", "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_cudnn_attention_backward",
})
PARTS = ("linear", "attention", "rest")


def profile_step(step: Callable[[], object]) -> dict:
    """Run ``step`` once under the profiler: its wall seconds and the seconds of each part."""
    import time
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events")  # one cycle is all we use
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            step()
            wall = time.perf_counter() - t0
    parts = dict.fromkeys(PARTS[:2], 0.0)
    for ev in prof.key_averages():
        name = ev.key
        us = ev.self_cpu_time_total
        if name in LINEAR:
            parts["linear"] += us / 1e6
        elif name in ATTENTION:
            parts["attention"] += us / 1e6
    parts["rest"] = max(wall - parts["linear"] - parts["attention"], 0.0)
    return {"seconds": wall, **parts}
