"""CPU demo: a tiny Qwen3 learns the synthetic task end to end in minutes.

    python -m srpo_jax.main --config=configs/demo.py:method=srpo --workdir=/tmp/srpo_demo

Builds the tiny byte-level BPE tokenizer (512 ids) into the workdir, initialises a 2-layer
Qwen3 (hidden 64, 4 query / 2 kv heads, head_dim 16), runs a short supervised warm-up so
some rollouts succeed, then RL with the embedded JAX engine: 8 prompts x 4 rollouts per
step, responses up to 24 tokens. Writes metrics.jsonl, curves.png (eval accuracy, routed
fraction, teacher entropy, response length) and checkpoints to the workdir; eval accuracy
should rise over the run. Meant to finish in under 10 minutes on 2 CPU cores. Any method
name works as the argument (grpo | sdpo | srpo | srpo_no_dw | advantage_mix).
"""

import ml_collections

from srpo_jax.config import load_config_module, parse_config_arg

base = load_config_module(__file__, "base.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, {"method": "srpo"})
    c = base.base_config(args["method"])

    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.overrides = dict(
        vocab_size=512,  # = the tiny tokenizer size (srpo_jax.data.tokenizer default)
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    )
    c.tokenizer.path = ""  # no hf_path: the tiny tokenizer is built into the workdir

    c.data.task = "synthetic"
    c.data.max_prompt_len = 128
    c.data.max_response_len = 24
    c.data.synthetic_train_size = 512
    c.data.synthetic_test_size = 64

    c.algo.group_size = 4
    c.algo.topk = 20  # a 512-id vocabulary: top-100 would cover a fifth of it
    c.algo.max_reprompt_len = 256

    c.optim.lr = 1e-4  # a random 2-layer model moves nowhere at the paper's 5.5e-6
    c.optim.warmup_steps = 2

    c.train.prompts_per_step = 8
    c.train.mini_batch_prompts = 8
    c.train.num_steps = 30
    c.train.loss_impl = "fused"
    c.train.fused_implementation = "xla"
    c.train.chunk_size = 256
    c.train.time_budget_hours = 0.0
    c.train.sft_warmup_steps = 100
    c.train.sft_lr = 1e-3

    c.eval.every_steps = 5
    c.eval.num_samples = 4
    c.eval.max_examples = 32
    c.checkpoint.every_steps = 10
    c.checkpoint.keep = 2
    c.log.tensorboard = False

    c.lock()
    return c
