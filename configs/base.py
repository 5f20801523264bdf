"""Defaults shared by every run: the paper's protocol (SPEC section 10) and the SPEC defaults.

Every key starts at the default of its section's dataclass (srpo_jax/config.py lists which
module owns which section; `default_config_dict` reads them), so no default is written here
a second time. `benchmark_config` sets what a (Qwen3 size, benchmark) run on one 8-GPU node
changes: the preset, remat on, the task, mesh.tensor = 8 and 16 rows per micro-batch.

Not meant for training by itself (a tiny random model on the synthetic task); the
per-(model, benchmark) files call `benchmark_config`. To inspect the resolved values:

    python -m srpo_jax.main --config=configs/base.py:method=srpo --print_config

prints the full config with lr 5.5e-6 and mini_batch_prompts 32 (grpo: 1e-6 and 8).

`optim.lr` and `train.mini_batch_prompts` are placeholders: left unset they resolve to the
method's SPEC 10 value (its record in srpo_jax/algo/methods.py), so
`--config.algo.method=grpo` also picks GRPO's learning rate and mini-batch.
"""

import ml_collections

from srpo_jax.config import default_config_dict, parse_config_arg


def base_config(method: str = "srpo") -> ml_collections.ConfigDict:
    """The unlocked shared ConfigDict (every key at its dataclass default, the method from the
    argument); callers adjust it, then lock it. With nothing adjusted, base is a tiny
    random-init model on the synthetic task."""
    c = default_config_dict()
    c.algo.method = method
    return c


def benchmark_config(preset: str, task: str, arg: str | None) -> ml_collections.ConfigDict:
    """One (Qwen3 size, benchmark) run on one 8-GPU node, method from the config arg."""
    args = parse_config_arg(arg, {"method": "srpo"})
    c = base_config(args["method"])
    c.model.preset = preset
    c.model.remat = True  # 8192-token responses: activations, not weights, bound memory
    c.data.task = task
    # Memory plan (python -m srpo_jax.aot.plan, docs/scale.md), worst case of 24k-token teacher
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
