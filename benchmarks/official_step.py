"""Worker for ``benchmarks/pretrain_step.py --official``: the 2021 SSAST code's pretraining step.

Runs in its own process with the 2021 code (``DIR/src/models/ast_models.py`` of a checkout of
github.com/YuanGongND/ssast) and timm 0.4.5 on ``sys.path``; it imports neither ssast nor the
newer timm. It builds that code's ``ASTModel`` at the requested size and its optimizer
(``torch.optim.Adam``, weight decay 5e-7, betas (0.95, 0.999), as its ``traintest_mask.py``
sets them), prints ``ready``, then for every ``step`` line read from stdin runs one joint step
as ``traintest_mask.py`` does (``pretrain_mpc``, then ``pretrain_mpg`` with another mask, loss
``nce + 10 * mse``, backward, Adam step) and prints the step's seconds; for a ``profile`` line it
runs one under the profiler and prints its parts (``benchmarks/step_profile.py``) as JSON.
``quit`` or the end of stdin stops it.

    python benchmarks/official_step.py --src ~/src/ssast --size tiny --batch 2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from pathlib import Path

from step_profile import profile_step  # benchmarks/step_profile.py, beside this script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="checkout of the 2021 code (holds src/models/ast_models.py)")
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mask-patch", type=int, default=400)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    models = Path(args.src) / "src" / "models"
    if not (models / "ast_models.py").is_file():
        sys.exit(f"error: {models / 'ast_models.py'} not found; --official takes a checkout of "
                 "github.com/YuanGongND/ssast")
    sys.path.insert(0, str(models))
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)  # the 2021 code draws its masks with Python's random module
    np.random.seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its patch layout while building
        from ast_models import ASTModel

        model = ASTModel(fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=128, input_tdim=args.frames,
                         model_size=args.size, pretrain_stage=True)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-7, betas=(0.95, 0.999))
    x = torch.randn(args.batch, args.frames, 128, generator=torch.Generator().manual_seed(1))
    import timm

    def step() -> None:
        _, nce = model(x, "pretrain_mpc", mask_patch=args.mask_patch, cluster=True)
        mse = model(x, "pretrain_mpg", mask_patch=args.mask_patch, cluster=True)
        loss = nce + 10 * mse
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    print(f"ready timm {timm.__version__}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            t0 = time.perf_counter()
            step()
            print(f"{time.perf_counter() - t0:.6f}", flush=True)
        elif command == "profile":  # one step split by benchmarks/step_profile.py, as one JSON line
            print(json.dumps(profile_step(step)), flush=True)
        else:
            break


if __name__ == "__main__":
    main()
