"""CPU demo: a tiny Qwen3 learns the synthetic code-lookup task end to end on 2 CPU cores.

    python -m srpo_jax.main --config=configs/demo.py:method=srpo --workdir=/tmp/srpo_demo

Builds the tiny byte-level BPE tokenizer (512 ids) into the workdir, initialises a 2-layer
Qwen3 (hidden 64, 4 query / 2 kv heads, head_dim 16, rope_theta 1e4), runs a supervised
warm-up, prints the copy probe, then 40 RL steps with the embedded JAX engine: 16 prompts x
8 rollouts per step (one update), responses up to 16 tokens (the gold answer is 10 with its
stop token), lr 1e-3. Writes metrics.jsonl, curves.png (eval accuracy, routed fraction,
teacher entropy, response length) and checkpoints to the workdir, and prints the test avg@4
at the first and last evaluation. Any method name works as the argument (grpo | sdpo | srpo
| srpo_no_dw | advantage_mix); the numbers below are for srpo.

The task (srpo_jax/data/synthetic.py): every one of 32 animal words has a secret code letter;
"Codes of owl and fox?" is answered `<answer> owl B fox A </answer>`. Test questions are word
pairs never asked in training, so test accuracy measures the codes learned.

Warm-up (warmup.steps, trainer.run_warmup -> sft.py; a stand-in for pre-training): 400 Adam
steps (lr 3e-3, decayed to 0 over the last 100; batch 32) on the task's warm-up split, which
teaches the answer format and copying an answer from the teacher-prompt layout but no code
(its letters are random). Then the copy probe (srpo_jax/trainer/probe.py) checks that the EMA
teacher reading a correct sibling's answer knows more than the student.

Measured (srpo, this file, seed 0, all 256 test prompts, avg@4), 2026-12-02 on the shared
2-core machine under load: copy probe teacher p(gold | correct demo) 0.964 vs student 0.065
(PASS); test avg@4 0.078 after the warm-up -> 0.119 (step 10) -> 0.199 (20) -> 0.379 (30)
-> 0.359 (40); warm-up 2:55, RL 1:51 of wall time at load average 5.

Compile bounds: prompts always fall in the 128 bucket and responses in the 16 bucket, so the
train step compiles once per teacher-row bucket (0, 32, 64 or 128 rows: at most 4 variants)
and the engine twice (train, eval).
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
        # Qwen3's 1e6 leaves most of a 16-wide head's rotary frequencies nearly still over a
        # 128-token prompt; at 1e4 the warm-up's copying circuit formed by step 300 (1e6:
        # none by step 300 at hidden 64; at hidden 128, by step 400).
        rope_theta=1e4,
        # Two layers: a Python loop over them beats lax.scan, whose backward stacks each
        # layer's [B, K, G, T, S] attention residuals into a zero-filled buffer and slices
        # them back out (same maths; compile time is no concern at this depth).
        scan_layers=False,
    )
    c.tokenizer.path = ""  # no hf_path: the tiny tokenizer is built into the workdir

    c.data.task = "synthetic"
    c.data.max_prompt_len = 128
    c.data.max_response_len = 16
    c.data.synthetic_train_size = 512
    c.data.synthetic_test_size = 256

    c.algo.group_size = 8
    c.algo.topk = 20  # a 512-id vocabulary: top-100 would cover a fifth of it
    c.algo.max_reprompt_len = 256

    c.optim.lr = 1e-3  # a tiny model moves nowhere at the paper's 5.5e-6 (1e-4: flat)
    c.optim.warmup_steps = 2

    c.train.prompts_per_step = 16
    c.train.mini_batch_prompts = 16
    c.train.num_steps = 40
    c.train.fused_implementation = "xla"
    c.train.chunk_size = 256
    c.train.time_budget_hours = 0.0
    c.warmup.steps = 400
    c.warmup.lr = 3e-3

    c.eval.every_steps = 10
    c.eval.num_samples = 4
    c.eval.max_examples = 256  # the whole test split
    c.checkpoint.every_steps = 10
    c.checkpoint.keep = 2
    c.log.tensorboard = False

    c.lock()
    return c
