# Sourced by the recipes: run `ssast finetune` in one process, or under torchrun when NPROC > 1.
# NPROC: processes (GPUs) on this machine (default 1). --batch-size is per process: the recipes'
# batch sizes are the official totals, so they divide them by NPROC.
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
ssast_finetune() {
  if [ "$NPROC" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m ssast.cli finetune "$@"
  else
    "$PYTHON" -m ssast.cli finetune "$@"
  fi
}
per_process() {  # the per-process share of a total batch size
  echo $(( ($1 + NPROC - 1) / NPROC ))
}
