"""The tunix side of bench_vs_tunix.py: N GRPO steps of tunix's GRPOLearner, timed.

Runs inside the benchmark's own virtual environment (.venv-tunix, google-tunix pinned
there; never imported by srpo_jax). Reads a JSON problem written by bench_vs_tunix.py
(model shape, batch, prompt texts and answers, tokenizer directory) and writes a JSON list
of per-step timings:

- step_s: wall time between the ends of consecutive global steps (one whole GRPO step:
  rollout, rewards and advantages, the policy update; the sampler shares the actor's
  model on one mesh, so there is no weight copy);
- rollout_s: RLCluster.generate (the vanilla sampler; it returns host token lists);
- update_s: RLCluster.update_actor, block_until_ready on the params. With actor and
  sampler on one mesh tunix prepares each step's batch in its data thread before the
  main loop takes it off the queue (RLLearner: `next(train_data_gen)`, then
  `update_actor`), so this wall time holds no rollout. (An earlier version subtracted the
  step's rollout from it, which under-reported tunix's update by the rollout's time.)

The learner is tunix's own loop (GRPOLearner.train); the timers wrap RLCluster methods
from the outside and change nothing it does. The model is tunix's Qwen3 with random
weights of the srpo_jax model's shape; beta = 0 (no reference model, as srpo's GRPO) and
one iteration per batch (tunix then skips old log-probs, as srpo_jax does with one
mini-batch).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers
from flax import nnx
from tunix.models.qwen3 import model as qwen3
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout


def build_cluster(p: dict, tokenizer) -> rl_cluster_lib.RLCluster:
    m = p["model"]
    # Auto axes: tunix shards with logical rules, not explicit sharding types.
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    cfg = qwen3.ModelConfig(
        num_layers=m["layers"],
        vocab_size=m["vocab"],
        embed_dim=m["hidden"],
        hidden_dim=m["mlp"],
        num_heads=m["heads"],
        head_dim=m["head_dim"],
        num_kv_heads=m["kv_heads"],
        rope_theta=1_000_000,
        norm_eps=1e-6,
        use_tied_embedding=False,
    )
    with mesh:
        model = qwen3.Qwen3(cfg, rngs=nnx.Rngs(p["seed"]))
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=p["new_tokens"],
        max_prompt_length=p["prompt_bucket"],
        kv_cache_size=p["prompt_bucket"] + p["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        eos_tokens=p["stop_ids"],
    )
    training = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(p["lr"], b1=0.9, b2=0.999, weight_decay=0.01),
        ),
        eval_every_n_steps=10**9,
        max_steps=p["steps"],
        mini_batch_size=p["prompts"],
    )
    cluster = rl_cluster_lib.ClusterConfig(
        role_to_mesh={
            rl_cluster_lib.Role.ACTOR: mesh,
            rl_cluster_lib.Role.REFERENCE: mesh,
            rl_cluster_lib.Role.ROLLOUT: mesh,
        },
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=training,
        rollout_config=rollout,
    )
    return rl_cluster_lib.RLCluster(actor=model, tokenizer=tokenizer, cluster_config=cluster)


def instrument(cluster: rl_cluster_lib.RLCluster, learner, log: dict) -> None:
    """Wraps generate / update_actor / the global step with wall-clock timers."""
    generate, update, global_step = cluster.generate, cluster.update_actor, learner._run_global_step

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = generate(*a, **k)
        log["rollout_s"].append(time.perf_counter() - t)
        return out

    def timed_update(*a, **k):
        t = time.perf_counter()
        update(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        log["update_s"].append(time.perf_counter() - t)

    def timed_global_step(*a, **k):
        # The actor and the sampler share one model here (same mesh), so tunix syncs no
        # weights; a global step is rollout (in tunix's data thread), rewards, advantages
        # and the update.
        global_step(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        log["ends"].append(time.perf_counter())

    cluster.generate, cluster.update_actor = timed_generate, timed_update
    learner._run_global_step = timed_global_step


def main(problem_path: str, out_path: str) -> None:
    p = json.loads(pathlib.Path(problem_path).read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(p["tokenizer_dir"])
    cluster = build_cluster(p, tokenizer)
    log = {"rollout_s": [], "update_s": [], "ends": []}
    answers = dict(zip(p["prompt_texts"], p["answers"], strict=True))

    def reward(prompts, completions, **_):
        return [float(answers.get(q, "\0") in c) for q, c in zip(prompts, completions, strict=True)]

    algo = grpo_learner.GRPOConfig(
        num_generations=p["group"],
        num_iterations=1,
        beta=0.0,
        epsilon=0.2,
        loss_agg_mode="token-mean",
    )
    algo.epsilon_high = 0.28  # read with hasattr by tunix's GRPO loss; not a config field
    learner = grpo_learner.GRPOLearner(cluster, algo, reward_fns=[reward])
    instrument(cluster, learner, log)
    n = p["prompts"]
    texts = p["prompt_texts"]
    data = [
        {"prompts": np.array([texts[(s * n + i) % len(texts)] for i in range(n)])}
        for s in range(p["steps"])
    ]
    t0 = time.perf_counter()
    learner.train(data)
    ends = [t0] + log["ends"]
    steps = np.diff(ends).tolist()
    out = json.dumps(
        {
            "step_s": steps,
            "rollout_s": log["rollout_s"],
            "update_s": log["update_s"],
            "jax": jax.__version__,
            "devices": str(jnp.zeros(()).devices()),
        }
    )
    pathlib.Path(out_path).write_text(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
