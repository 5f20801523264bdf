"""srpo_jax: Sample-Routed Policy Optimization (SRPO) for Qwen3 in JAX / Flax NNX.

Correct rollouts train with GRPO; failed rollouts that have a correct sibling are
self-distilled (SDPO) from an EMA teacher that sees the sibling's solution, with
entropy-aware token weights. See ../shared/SPEC.md and the README.
"""

from srpo_jax import jax_startup as _jax_startup

__version__ = "0.1.0"

# Before any backend starts: libtpu flags the train step needs (see jax_startup).
_jax_startup.add_libtpu_workarounds()
