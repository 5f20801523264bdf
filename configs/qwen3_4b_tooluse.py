"""Qwen3-4B on ToolAlpaca tool use (about 4046 train / 68 test): the paper setting, one 8-GPU node.

    python -m srpo_jax.main --config=configs/qwen3_4b_tooluse.py:method=srpo \
        --config.model.hf_path=/path/to/Qwen3-4B --workdir=runs/qwen3_4b_tooluse_srpo

Trains Qwen3-4B (weights and tokenizer from model.hf_path) with the method named by the config
argument (grpo | sdpo | srpo | srpo_no_dw | advantage_mix; default srpo) for a 10-hour
training budget: 32 prompts x 8 rollouts per step, T = 1.0 sampling, responses up to 8192
tokens, lr and mini-batch per SPEC 10. It evaluates avg@16 on the test split every 5 steps
and writes metrics.jsonl, TensorBoard events, curves.png and checkpoints (last 3) to the
workdir; a restart with the same workdir resumes from the latest complete checkpoint.
Mesh: tensor=8, 16 rows per micro-batch, remat on (one node; memory plan in docs/scale.md); change
--config.mesh.* for other layouts. With SGLang rollout
servers add --config.rollout.engine=sglang --config.rollout.sglang.urls="('http://host:port',)".
"""

from srpo_jax.config import load_config_module

base = load_config_module(__file__, "base.py")


def get_config(arg=None):
    return base.benchmark_config("qwen3_4b", "tooluse", arg)
