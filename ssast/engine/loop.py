"""The training loop: flat, one optimizer step per iteration, objective and metrics plugged in.

Per step: set the learning rate from the schedule (a function of the step), run
``accumulation`` micro-batches (features on the device, the objective's loss, DeepSpeed's
backward and step), then, on their intervals, log, validate (best model, and whatever the run
does after a validation, such as pretraining's plateau) and save a checkpoint. The masks of a
micro-batch come from a generator seeded by ``(seed, rank, micro-batch index)``, so a resumed
run draws the same masks as an uninterrupted one without saving generator states.
"""
from __future__ import annotations

import datetime
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .. import seeds
from .distributed import all_max, all_reduce_sum
from .logging import memory_bytes


@dataclass
class TrainState:
    """Everything about the run's progress that a resume needs (besides weights and optimizer)."""

    step: int = 0
    epoch_steps: int = 4000  # optimizer steps per data epoch (see ssast.engine.data)
    best: float | None = None  # best validation metric so far
    best_step: int | None = None
    last_valid: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


def step_generator(seed: int, rank: int, micro_index: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-batch's masks: a function of (seed, rank, micro-batch index)."""
    return seeds.generator(seed, "masks", rank, micro_index, device=device)


class _Window:
    """Sums of the logged training values since the last log line."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.micro = 0
        self.steps = 0
        self.seconds = 0.0
        self.wait = 0.0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.micro += 1


def validate(engine, objective, valid, features, micro_batch: int) -> dict[str, float]:
    """The objective's validation metrics over the whole validation set (all ranks)."""
    engine.eval()
    ev = objective.evaluator()
    it = iter(valid)
    while True:
        batch = next(it, None)
        # Ranks may hold different numbers of batches; all run as many forward passes as the
        # rank with the most (ZeRO stage 3 gathers weights collectively in every pass).
        if not all_max(int(batch is not None)):
            break
        if batch is None:
            ev.update(engine, features.dummy(micro_batch), None)
        else:
            ev.update(engine, features(batch), batch)
    engine.train()
    return ev.compute()


def fit(engine, objective, stream, features, settings, state: TrainState, *, rank: int, runlog,
        lr: Callable[[int], float], valid=None, save: Callable[[TrainState], None] | None = None,
        on_best: Callable[[TrainState, dict], None] | None = None,
        on_valid: Callable[[TrainState, dict], None] | None = None,
        skip_counts: Callable[[], torch.Tensor] | None = None) -> TrainState:
    """Train from ``state.step`` to ``settings.max_steps``; returns the final state.

    ``stream.batches(step)``: the micro-batches from a step on; ``features(batch)``: model input;
    ``objective.train_step(engine, x, batch, generator) -> (loss, metrics)``;
    ``lr(step)``: the rate of the update from ``step`` (a parameter group with an ``lr_scale``
    entry gets the rate times that scale);
    ``save(state)``: write a checkpoint (every ``save_every`` steps and at the end);
    ``on_best(state, metrics)``: called after a validation that improved the best metric;
    ``on_valid(state, metrics)``: called after every validation (after ``on_best``).
    """
    device = features.device
    accum = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    clips_per_step = micro * accum * engine.world_size
    batches = stream.batches(state.step)
    engine.train()
    win = _Window()
    while state.step < settings.max_steps:
        t_step = time.perf_counter()
        rate = lr(state.step)
        for group in engine.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        for k in range(accum):
            t_wait = time.perf_counter()
            batch = next(batches)
            win.wait += time.perf_counter() - t_wait
            x = features(batch)  # (B, T, F)
            gen = step_generator(settings.seed, rank, state.step * accum + k, device)
            loss, metrics = objective.train_step(engine, x, batch, gen)
            engine.backward(loss)
            engine.step()
            win.add(metrics)
        state.step += 1
        win.steps += 1
        if device.type == "cuda" and (state.step % settings.log_every == 0):
            torch.cuda.synchronize(device)
        win.seconds += time.perf_counter() - t_step

        if state.step % settings.log_every == 0 or state.step == settings.max_steps:
            names = sorted(win.sums)
            local = torch.stack([win.sums[n] for n in names] + [torch.tensor(float(win.micro), device=device)])
            total = all_reduce_sum(local)
            values = {n: float(total[i] / total[-1]) for i, n in enumerate(names)}
            if math.isnan(values.get("loss", 0.0)):
                raise RuntimeError(f"training diverged: the loss is NaN at step {state.step}")
            perf = {"lr": rate, "clips_per_s": clips_per_step * win.steps / max(win.seconds, 1e-9),
                    "data_wait_frac": win.wait / max(win.seconds, 1e-9),
                    "memory_gb": memory_bytes(device) / 2**30}
            norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
            if norm is not None and math.isfinite(float(norm)):
                perf["grad_norm"] = float(norm)
            if skip_counts is not None:
                perf["skipped_clips"] = float(all_reduce_sum(skip_counts()).sum())
            runlog.scalars(state.step, values, "train")
            runlog.scalars(state.step, perf, "perf")
            eta = (settings.max_steps - state.step) * win.seconds / win.steps
            runlog.info("step %d/%d  %s  lr %.3g  %.1f clips/s  data wait %.0f%%  mem %.2f GB  eta %s", state.step,
                        settings.max_steps, "  ".join(f"{k} {v:.4f}" for k, v in values.items()), rate,
                        perf["clips_per_s"], 100 * perf["data_wait_frac"], perf["memory_gb"],
                        datetime.timedelta(seconds=round(eta)))
            runlog.advance(1, loss=f"{values.get('loss', float('nan')):.4f}", lr=f"{rate:.2e}")
            win = _Window()
        else:
            runlog.advance(1)

        if valid is not None and state.step % settings.valid_every == 0:
            t0 = time.perf_counter()
            metrics = validate(engine, objective, valid, features, micro)
            value = metrics[objective.metric]
            state.last_valid = {"step": state.step, **metrics}
            improved = state.best is None or (value > state.best if objective.mode == "max" else value < state.best)
            runlog.scalars(state.step, {k: float(v) for k, v in metrics.items()}, "valid")
            runlog.info("validation at step %d: %s (%d clips, %.1f s)%s", state.step,
                        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "clips"), metrics["clips"],
                        time.perf_counter() - t0, "  new best" if improved else "")
            if improved:
                state.best, state.best_step = float(value), state.step
                if on_best is not None:
                    on_best(state, metrics)
            if on_valid is not None:
                on_valid(state, metrics)

        if save is not None and (state.step % settings.save_every == 0 or state.step == settings.max_steps):
            save(state)
    return state
