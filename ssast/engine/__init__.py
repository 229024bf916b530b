"""The training engine: DeepSpeed, a flat loop, pure schedules, resumable checkpoints, logs.

Roles by file: :mod:`.config` (run settings and the DeepSpeed JSON), :mod:`.schedule`
(learning rates as functions of the step, and the plateau of pretraining), :mod:`.setup` (what
pretraining and fine-tuning share: seeding, precision, optimizer, engine, resume, features on
the device, loaders), :mod:`.objective` and :mod:`.finetune_objective` (what a step computes),
:mod:`.data` (the resumable training streams and fixed evaluation sets), :mod:`.loop` (the
loop), :mod:`.checkpointing` (DeepSpeed checkpoints and exports), :mod:`.logging`
(TensorBoard, progress bar, text log), :mod:`.distributed` (process group), :mod:`.pretrain`
and :mod:`.finetune` (the two runs). DeepSpeed is imported only when a run starts.
"""
