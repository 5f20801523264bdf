"""The device side: one jitted, sharded SRPO training step.

    config.py      the `optim` and `train` sections and StepSettings (no jax)
    batch.py       TrainBatch, the typed batch, and the host-side packing into buckets
    loss.py        one micro-batch's forward passes and objective
    state.py       TrainState, init_state, abstract_state and the state's shardings
    train_step.py  the pure train step, jit_train_step and the Learner that calls it

Submodules are imported explicitly, so `srpo_jax.learner.config` stays free of jax.
"""
