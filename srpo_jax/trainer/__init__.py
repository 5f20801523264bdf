"""The host side: everything around the jitted step, in Python and numpy.

config.py      the `checkpoint`, `eval`, `log` and `warmup` sections (no jax)
setup.py       everything a run needs, built from the config (the `Run`)
step.py        one step: rollout, rewards, routing, packing, learner, weight sync
loop.py        the loop: evaluation, checkpoints, time budget, preemption, resume
checkpoint.py  orbax checkpoints with the host state
host_memory.py free heap pages back to the kernel at each checkpoint (glibc malloc_trim)
evaluation.py  avg@k / maj@k on a test split
metrics.py     metrics.jsonl, TensorBoard, W&B, curves.png
progress.py    the console view; report.py the start and end summaries
faults.py      injected faults for tests; warmup.py the supervised warm-up
probe.py       the copy probe: does the self-teacher know more than the student?
"""
