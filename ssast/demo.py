"""A small end-to-end run on generated spectrograms: pretrain, save, reload, fine-tune.

It needs no data and no download and takes well under a minute on a laptop CPU. The
spectrograms are harmonic tones whose pitch rises or falls over time, in noise: unlabeled for
masked-patch pretraining, labelled by direction for fine-tuning.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .checkpoint import save_checkpoint, save_released
from .model import ASTModel


def synthetic_spectrograms(n: int, frames: int, bins: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, frames, bins) log-mel-like images and (n,) labels: 0 rising pitch, 1 falling."""
    t = torch.linspace(0, 1, frames)  # (T,)
    f = torch.arange(bins, dtype=torch.float32)  # (F,)
    labels = torch.randint(0, 2, (n,), generator=generator)
    start = torch.rand(n, generator=generator) * 0.3 * bins + 0.1 * bins
    slope = (torch.rand(n, generator=generator) * 0.3 + 0.2) * bins
    slope = torch.where(labels == 0, slope, -slope)
    f0 = start[:, None] + slope[:, None] * t + 0.5 * bins * (labels[:, None] == 1)  # (n, T)
    spec = torch.zeros(n, frames, bins)
    for h in (1, 2, 3):
        centre = (f0 * h / 2)[..., None]  # (n, T, 1)
        spec += torch.exp(-0.5 * ((f - centre) / 1.5) ** 2) / h
    spec = spec + 0.3 * torch.randn(n, frames, bins, generator=generator)
    return spec, labels


def run(out_dir: str | Path = "demo_out", pretrain_steps: int = 30, finetune_steps: int = 150, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames, bins, batch = 128, 128, 16
    geometry = dict(fshape=16, tshape=16, input_fdim=bins, input_tdim=frames, model_size="tiny")

    print(f"[1/3] masked-patch pretraining: tiny 16x16-patch model, {frames} frames x {bins} bins, "
          f"{pretrain_steps} steps of batch {batch}")
    model = ASTModel(fstride=16, tstride=16, pretrain_stage=True, **geometry)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999))
    t0 = time.perf_counter()
    first = last = None
    for step in range(1, pretrain_steps + 1):
        x, _ = synthetic_spectrograms(batch, frames, bins, g)
        acc, nce, mse = model(x, "pretrain_joint", mask_patch=24, generator=g)
        loss = nce + 10 * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = (acc.item(), nce.item(), mse.item())
        first = first or last
        if step == 1 or step % 10 == 0 or step == pretrain_steps:
            print(f"  step {step:3d}  masked acc {last[0]:.3f}  nce {last[1]:.3f}  mse {last[2]:.3f}")
    print(f"  {pretrain_steps / (time.perf_counter() - t0):.1f} steps/s")
    save_checkpoint(model, out / "pretrained.pt")
    save_released(model, out / "pretrained_released.pth")
    print(f"  saved {out / 'pretrained.pt'} (project format) and {out / 'pretrained_released.pth'} (released format)")

    print(f"[2/3] fine-tuning a rising/falling pitch classifier from the released-format file, "
          f"{finetune_steps} steps of batch {batch}")
    clf = ASTModel(label_dim=2, fstride=16, tstride=16, pretrain_stage=False,
                   load_pretrained_mdl_path=out / "pretrained_released.pth", **geometry)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-4)
    for step in range(1, finetune_steps + 1):
        x, y = synthetic_spectrograms(batch, frames, bins, g)
        loss = torch.nn.functional.cross_entropy(clf(x, "ft_avgtok"), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or step % 20 == 0 or step == finetune_steps:
            print(f"  step {step:3d}  loss {loss.item():.3f}")

    print("[3/3] evaluation on 64 new clips")
    clf.eval()
    x, y = synthetic_spectrograms(64, frames, bins, g)
    with torch.no_grad():
        acc_ft = (clf(x, "ft_avgtok").argmax(-1) == y).float().mean().item()
    save_checkpoint(clf, out / "finetuned.pt", labels=["rising", "falling"])
    print(f"  accuracy {acc_ft:.3f} (chance 0.5); saved {out / 'finetuned.pt'}")
    return {"pretrain_first": first, "pretrain_last": last, "finetune_accuracy": acc_ft,
            "chance": 0.5, "seconds": time.perf_counter() - t0, "log_chance_nce": math.log(24)}
