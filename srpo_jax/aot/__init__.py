"""Compile-only tooling: programs compiled by the real XLA:GPU and XLA:TPU compilers on a
machine without the device, and what they tell about memory and FLOPs.

    targets.py       compile-only devices for each target topology
    topologies.py    the named targets (h20x8, tpu-v5p-8, ...); chips.py their figures
    hlo_flops.py     matmul FLOPs counted from compiled HLO
    plan.py          the memory plan: python -m srpo_jax.plan --topology=h20x8
    device_check.py  the one-call check for a lent GPU (scripts/accelerator_check.sh)

Nothing is imported here: the plan must set XLA_FLAGS before JAX starts.
"""
