"""srpo_jax: Sample-Routed Policy Optimization (SRPO) for Qwen3 in JAX / Flax NNX.

Correct rollouts train with GRPO; failed rollouts that have a correct sibling are
self-distilled (SDPO) from an EMA teacher that sees the sibling's solution, with
entropy-aware token weights. See ../shared/SPEC.md and the README.
"""

__version__ = "0.1.0"
