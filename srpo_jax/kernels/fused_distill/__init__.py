"""Fused SDPO distillation loss: reference spec, chunked XLA, Pallas GPU and TPU back-ends.

Use `fused_distill` (api.py); the other modules are its implementations.

Names load on first use (PEP 562), so importing one submodule, such as the
package's config, does not import the others or jax.
"""

from srpo_jax.lazy_exports import resolver

_HOME = {
    "FusedDistillInputs": "api",
    "FusedDistillOptions": "api",
    "FusedDistillOutput": "reference",
    "IMPLEMENTATIONS": "api",
    "fused_distill": "api",
    "fused_distill_sharded": "api",
    "resolve_implementation": "api",
}
__all__ = [
    "FusedDistillInputs",
    "FusedDistillOptions",
    "FusedDistillOutput",
    "IMPLEMENTATIONS",
    "fused_distill",
    "fused_distill_sharded",
    "resolve_implementation",
]

__getattr__ = resolver(__name__, _HOME)
