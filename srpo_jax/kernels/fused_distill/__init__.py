"""Fused SDPO distillation loss: reference spec, chunked XLA, Pallas GPU and TPU back-ends.

Use `fused_distill` (api.py); the other modules are its implementations.
"""

from srpo_jax.kernels.fused_distill.api import (
    IMPLEMENTATIONS,
    fused_distill,
    fused_distill_sharded,
    resolve_implementation,
)
from srpo_jax.kernels.fused_distill.reference import FusedDistillOutput

__all__ = [
    "IMPLEMENTATIONS",
    "FusedDistillOutput",
    "fused_distill",
    "fused_distill_sharded",
    "resolve_implementation",
]
