"""The device side: one jitted, sharded SRPO training step.

    config.py      the `optim` and `train` sections and StepSettings (no jax)
    batch.py       TrainBatch, the typed batch, and the host-side packing into buckets
    loss.py        one micro-batch's forward passes and objective
    train_step.py  TrainState, the pure train step and the Learner that jits it

Submodules are imported explicitly, so `srpo_jax.learner.config` stays free of jax.
"""
