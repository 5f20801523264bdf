"""Defaults shared by every run: the paper's protocol (SPEC section 10) and the SPEC defaults.

Not meant for training by itself (a tiny random model on the synthetic task); the
per-(model, benchmark) files call `benchmark_config`. To inspect the resolved values:

    python -m srpo_jax.main --config=configs/base.py:method=srpo --print_config

prints the full config with lr 5.5e-6 and mini_batch_prompts 32 (grpo: 1e-6 and 8).

`optim.lr` and `train.mini_batch_prompts` are placeholders: left unset they resolve to the
method's SPEC 10 value (srpo_jax.config.METHOD_LR / METHOD_MINI_BATCH_PROMPTS), so
`--config.algo.method=grpo` also picks GRPO's learning rate and mini-batch.
"""

import ml_collections
from ml_collections import config_dict

from srpo_jax.config import parse_config_arg


def base_config(method: str = "srpo") -> ml_collections.ConfigDict:
    """The unlocked shared ConfigDict; callers adjust it, then lock it."""
    c = ml_collections.ConfigDict()

    # The benchmark files pick the Qwen3 size; alone, base is a tiny random-init model.
    c.model = dict(preset="tiny", hf_path="", dtype="bfloat16", remat=False, random_init=False)
    c.model.overrides = {}
    # Queries per attention block (0: all at once); exact, bounds the live scores.
    c.model.attention_query_chunk = 1024
    c.model.attention_impl = (
        "auto"  # auto | xla | cudnn | splash: auto = cudnn on GPU, splash on TPU
    )
    c.tokenizer = dict(path="")  # "" = the tokenizer shipped with model.hf_path
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data = dict(
        task="synthetic",
        data_dir="../shared/data",
        max_prompt_len=2048,  # longer prompts are filtered out
        max_response_len=8192,
        shuffle_seed=0,
        synthetic_train_size=512,
        synthetic_test_size=64,
    )
    c.algo = dict(
        method=method,
        group_size=8,
        success_threshold=0.5,
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=3.0,
        tis_cap=2.0,
        is_clip=2.0,
        topk=100,
        alpha=0.5,
        tau=1.0,
        add_tail=True,
        entropy_over="vocab",
        loss_agg="token-mean",
        adv_mix_lambda=0.1,
        ema_rate=0.05,
        max_reprompt_len=10240,
        demo_seed=0,
    )
    c.optim = dict(
        lr=config_dict.placeholder(float),  # None = METHOD_LR[method]
        warmup_steps=10,
        b1=0.9,
        b2=0.999,
        weight_decay=0.01,
        grad_clip=1.0,
        max_consecutive_skips=10,
    )
    c.train = dict(
        prompts_per_step=32,
        mini_batch_prompts=config_dict.placeholder(int),  # None = METHOD_MINI_BATCH_PROMPTS
        micro_batch_rows=0,  # 0 = the whole mini-batch at once
        num_steps=1000,
        seed=0,
        loss_impl="fused",
        fused_implementation="auto",
        fused_grad_mode="auto",  # forward for fp32 unembeddings, recompute for bf16
        chunk_size=1024,
        time_budget_hours=10.0,  # training time; evaluation excluded
        sft_warmup_steps=0,
        sft_lr=1e-4,
    )
    c.rollout = dict(engine="jax", temperature=1.0, top_p=1.0, top_k=-1, max_retries=2)
    c.rollout.sglang = dict(
        urls=(),
        launch_command="",
        num_servers=1,
        sync="update_from_disk",
        export_dir="",
        timeout_s=600.0,
        max_retries=3,
        max_restarts=5,
        rows_per_request=64,
        max_concurrency=8,
    )
    c.eval = dict(every_steps=5, num_samples=16, temperature=0.6, top_p=0.95, max_examples=0)
    c.checkpoint = dict(every_steps=10, keep=3)
    c.log = dict(tensorboard=True, progress=True)
    return c


def benchmark_config(preset: str, task: str, arg: str | None) -> ml_collections.ConfigDict:
    """One (Qwen3 size, benchmark) run on one 8-GPU node, method from the config arg."""
    args = parse_config_arg(arg, {"method": "srpo"})
    c = base_config(args["method"])
    c.model.preset = preset
    c.model.remat = True  # 8192-token responses: activations, not weights, bound memory
    c.data.task = task
    # Memory plan (python -m srpo_jax.plan, docs/scale.md), worst case of 24k-token teacher
    # sequences, query-chunked attention, sequence-parallel residual stream: heads split 8
    # ways (tensor=8) and 16 rows per micro-batch fit 8 x H20 with >= 10% headroom for
    # Qwen3-8B (67 GiB peak; 32 rows do not) and -4B (47 GiB; 32 rows fit too).
    c.mesh.tensor = 8
    c.train.micro_batch_rows = 16
    c.lock()
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, {"method": "srpo"})
    c = base_config(args["method"])
    c.lock()
    return c
