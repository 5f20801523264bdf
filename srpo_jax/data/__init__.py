"""Data: benchmark splits, chat prompts, verifiable rewards, the synthetic demo task.

Tokenizers live in `srpo_jax.data.tokenizer` (imported explicitly: it pulls in
transformers, which the pure-Python reward and dataset code does not need).

Names load on first use (PEP 562), so importing one submodule, such as the
package's config, does not import the others or jax.
"""

from srpo_jax.lazy_exports import resolver

_HOME = {
    "EpochSampler": "datasets",
    "Example": "datasets",
    "PromptSet": "datasets",
    "SamplerCursor": "datasets",
    "encode_prompt": "datasets",
    "is_success": "rewards",
    "load_jsonl": "datasets",
    "load_split": "datasets",
    "make_synthetic_split": "synthetic",
    "make_synthetic_splits": "synthetic",
    "mcq_reward": "rewards",
    "messages": "datasets",
    "render_prompt": "datasets",
    "reward_fn": "rewards",
    "tooluse_reward": "rewards",
}
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

__getattr__ = resolver(__name__, _HOME)
