"""What a run reports: TensorBoard scalars, a progress bar with ETA, a plain-text log, a JSONL file.

Only rank 0 writes. TensorBoard (``DIR/tensorboard``) gets every logged value; ``DIR/train.log``
gets the text lines (also printed, above the progress bar when the output is a terminal; each
line has its own ETA for batch jobs' logs); ``DIR/metrics.jsonl`` gets one JSON object per
logged step, for scripts and tests. A resumed run drops what the killed run had
logged after its checkpoint (TensorBoard's ``purge_step``; the JSONL is cut back), so every
curve has one value per step.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path

import torch

from ..files import atomic_write, json_text

LOGGER = "ssast.engine"


def memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA's max allocated on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _TqdmHandler(logging.Handler):
    """Print log lines without breaking the progress bar."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - a logging handler must not raise
            self.handleError(record)


class RunLog:
    """TensorBoard, progress bar, text log and JSONL of a run (active on rank 0 only)."""

    def __init__(self, run_dir: str | Path, active: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True, desc: str = "pretrain"):
        self.active = active
        self.log = logging.getLogger(LOGGER)
        self.writer = self.bar = None
        self.run_dir = Path(run_dir)
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        fh = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        sh = _TqdmHandler()
        sh.setFormatter(fmt)
        self.log.addHandler(fh)
        self.log.addHandler(sh)
        # Messages of the data pipeline and the engine's modules go to the same places.
        for name in ("ssast.shards", "ssast.datasets", "ssast.engine.data", "ssast.engine.checkpointing"):
            lg = logging.getLogger(name)
            lg.setLevel(logging.INFO)
            lg.handlers = [fh, sh]
            lg.propagate = False

        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self._trim_jsonl(start_step)
        # The bar is for terminals; in a batch job's log file the text lines carry the ETA.
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.05,
                            desc=desc)

    def _trim_jsonl(self, start_step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= start_step:
                    keep.append(line)
            except ValueError:
                pass  # a line cut short by a kill
        atomic_write(path, "".join(k + "\n" for k in keep))

    def info(self, msg: str, *args) -> None:
        if self.active:
            self.log.info(msg, *args)

    def warning(self, msg: str, *args) -> None:
        if self.active:
            self.log.warning(msg, *args)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """Log ``values`` at ``step`` under ``prefix/`` (TensorBoard) and as one JSONL record."""
        if not self.active:
            return
        for k, v in values.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json_text({"step": step, "kind": prefix, "time": time.time(), **values}, indent=None))

    def advance(self, n: int = 1, **postfix) -> None:
        """Move the progress bar ``n`` steps, optionally with new figures beside it."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        for h in list(self.log.handlers):
            h.close()
