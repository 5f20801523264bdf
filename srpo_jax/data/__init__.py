"""Data: benchmark splits, chat prompts, verifiable rewards, the synthetic demo task.

Tokenizers live in `srpo_jax.data.tokenizer` (imported explicitly: it pulls in
transformers, which the pure-Python reward and dataset code does not need).
"""

from srpo_jax.data.datasets import (
    EpochSampler,
    Example,
    PromptSet,
    SamplerCursor,
    encode_prompt,
    load_jsonl,
    load_split,
    messages,
    render_prompt,
)
from srpo_jax.data.rewards import is_success, mcq_reward, reward_fn, tooluse_reward
from srpo_jax.data.synthetic import make_synthetic_split, make_synthetic_splits

__all__ = [
    "EpochSampler",
    "Example",
    "PromptSet",
    "SamplerCursor",
    "encode_prompt",
    "is_success",
    "load_jsonl",
    "load_split",
    "make_synthetic_split",
    "make_synthetic_splits",
    "mcq_reward",
    "messages",
    "render_prompt",
    "reward_fn",
    "tooluse_reward",
]
