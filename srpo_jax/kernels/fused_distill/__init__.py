"""Fused SDPO distillation loss: reference spec, chunked XLA, Pallas GPU and TPU back-ends.

Use `fused_distill` (api.py); the other modules are its implementations.

Names load on first use (PEP 562), so importing one submodule, such as the
package's config, does not import the others or jax.
"""

import importlib

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


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    try:  # a submodule, e.g. srpo_jax.algo.routing after `import srpo_jax.algo`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
