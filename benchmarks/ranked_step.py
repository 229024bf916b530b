"""Worker for ``benchmarks/pretrain_step.py --ranks N``: the single-pass step over N processes.

Data parallel on one machine, one rank per share of the cores, as ``torchrun --nproc-per-node N``
starts the trainer's ranks on a CPU: N ranks, each with ``--threads`` torch threads (the
machine's threads split between them), join a gloo process group; each builds the same model
(the same seed as the in-process schedules) wrapped in ``DistributedDataParallel`` and the same
fused Adam, and takes its share of the batch (``--batch`` / N clips, rank r the r-th slice of the
same input). Since the InfoNCE loss is a mean over clips and the MSE a mean over equally many
patches per clip, the gradients DDP averages over the ranks are those of the whole batch: the
update is the batch's step, computed by N processes.

Each rank prints ``ready``, then for every ``step MODE`` line on stdin (``MODE`` one of
``pretrain_step.RANKED_MODES``) waits for the other ranks, runs one step of that
schedule and prints its seconds; ``profile MODE`` runs one under the profiler and prints its parts
(``benchmarks/step_profile.py``) as JSON; ``quit`` or the end of stdin stops it.

    python benchmarks/ranked_step.py --rank 0 --world 1 --port 29500 --size tiny --batch 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import pretrain_step  # benchmarks/pretrain_step.py, beside this script (puts this checkout's ssast first)
import torch
import torch.distributed as dist
from step_profile import profile_step
from torch.nn.parallel import DistributedDataParallel

RANKED_MODES = pretrain_step.RANKED_MODES


def build_steps(size: str, batch: int, frames: int, mask_patch: int, rank: int, world: int,
                masks: torch.Tensor | None = None) -> tuple[dict, torch.nn.Module]:
    """This rank's step of every schedule in ``RANKED_MODES`` (one model and optimizer for all)."""
    if batch % world:
        raise ValueError(f"a batch of {batch} does not split into {world} equal parts (--ranks)")
    share = batch // world
    x = pretrain_step.example_batch(batch, frames, "cpu")[rank * share:(rank + 1) * share]
    model, opt = pretrain_step.build_model(size, frames, "cpu")
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    if masks is not None:
        masks = masks[rank * share:(rank + 1) * share]
    # Each rank draws its own clips' masks: seeds apart, as one process draws distinct masks per clip.
    g = torch.Generator().manual_seed(1000 * rank)
    return {m: pretrain_step.make_step(ddp, opt, x, m, mask_patch, g, masks) for m in RANKED_MODES}, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True, help="the group's rendezvous port on 127.0.0.1")
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=2, help="the whole batch, split between the ranks")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mask-patch", type=int, default=400)
    p.add_argument("--threads", type=int, default=1, help="torch threads of this rank")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=datetime.timedelta(minutes=5))
    try:
        steps, _ = build_steps(args.size, args.batch, args.frames, args.mask_patch, args.rank, args.world)
        print(f"ready {args.rank}", flush=True)
        for line in sys.stdin:
            command, _, mode = line.strip().partition(" ")
            if command == "step":
                dist.barrier()  # all ranks start together; the gradients' all-reduce ends them together
                t0 = time.perf_counter()
                steps[mode]()
                print(f"{time.perf_counter() - t0:.6f}", flush=True)
            elif command == "profile":
                dist.barrier()
                print(json.dumps(profile_step(steps[mode])), flush=True)
            else:
                break
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
