"""CPU threads: OpenMP's wait policy, set before torch loads its OpenMP runtime.

libgomp's threads (PyTorch's CPU thread pool) spin between parallel regions by default. On a
machine whose cores other processes also use, a spinning thread holds a core its partner
thread needs: a tiny-model pretraining step (batch 2, 1024 frames) took 6.4 s in fp32 and
6.9 s under bf16 autocast with two spinning threads and 1.07 s and 0.27 s with threads that
sleep while they wait, on a 2-core machine with other jobs running. Importing ``ssast`` sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment gives a policy; it takes effect only if
torch was not imported first (the ``ssast`` command and ``python -m ssast.cli`` import ssast
first). Set ``OMP_WAIT_POLICY=ACTIVE`` to keep spinning threads (a machine of one's own).
"""
from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"

os.environ.setdefault(WAIT_POLICY, "PASSIVE")
