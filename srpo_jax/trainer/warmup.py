"""Supervised warm-up: teacher-forced cross-entropy on (prompt, target response) pairs.

Used by the CPU demo only. A tiny Qwen3 initialised at random cannot emit the answer
format, so RL would see reward 0 everywhere and learn nothing; a short warm-up inside the
same run teaches the format (and, on the synthetic task's hinted questions, to copy an
answer from context) before SRPO starts. It trains on a copy of the params with its own
Adam state; the RL optimizer and the EMA teacher are created from its result
(phi_0 = theta_0 still holds at the start of RL).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from srpo_jax import multihost
from srpo_jax.data.buckets import bucket_length
from srpo_jax.kernels import chunked_vocab
from srpo_jax.trainer.config import WarmupConfig  # noqa: F401


def pack_pairs(
    prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> dict[str, np.ndarray]:
    """[prompt left-padded | target right-padded] with a loss mask on target tokens."""
    p_len = bucket_length(max(len(p) for p in prompts))
    r_len = bucket_length(max(len(t) for t in targets))
    b = len(prompts)
    ids = np.full((b, p_len + r_len), pad_id, np.int32)
    mask = np.zeros((b, p_len + r_len), np.int32)
    tgt = np.full((b, r_len), pad_id, np.int32)
    tmask = np.zeros((b, r_len), np.float32)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        ids[i, p_len - len(p) : p_len] = p
        mask[i, p_len - len(p) : p_len] = 1
        ids[i, p_len : p_len + len(t)] = t
        mask[i, p_len : p_len + len(t)] = 1
        tgt[i, : len(t)] = t
        tmask[i, : len(t)] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "targets": tgt, "target_mask": tmask}


def target_logprobs(graphdef, params, batch) -> jax.Array:
    """log p(target token | prefix) [B, R] (fp32) for a `pack_pairs` batch; 0 past a target."""
    model = nnx.merge(graphdef, params)
    p_len = batch["input_ids"].shape[1] - batch["targets"].shape[1]
    r_len = batch["targets"].shape[1]
    h_BSD = model.hidden_states(batch["input_ids"], attention_mask_BT=batch["attention_mask"])
    h_BRD = h_BSD[:, p_len - 1 : p_len - 1 + r_len]
    b, r, d = h_BRD.shape
    logp_BR = chunked_vocab.token_logprobs(
        h_BRD.reshape(b * r, d), model.unembedding(), batch["targets"].reshape(-1)
    ).reshape(b, r)
    return logp_BR * batch["target_mask"]


def _loss(graphdef, params, batch):
    mask = batch["target_mask"]
    return -jnp.sum(target_logprobs(graphdef, params, batch)) / jnp.maximum(jnp.sum(mask), 1.0)


def _schedule(cfg: WarmupConfig) -> optax.Schedule:
    """Constant lr, then a linear decay to 0 over the last quarter of the steps: the decay
    averages out the last mini-batches' noise (at a constant lr the tiny demo model's letter
    marginals chased the letters of its latest batches: a first-letter share of 0.37
    against the data's 0.25 was measured)."""
    hold = cfg.steps - cfg.steps // 4
    return optax.join_schedules(
        [optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, 0.0, cfg.steps - hold)],
        [hold],
    )


def run_sft(
    graphdef, params, prompts, targets, cfg: WarmupConfig, *, seed: int, pad_id: int, on_step=None
):
    """Runs cfg.steps Adam steps over shuffled (prompt, target) pairs; returns new params.

    `on_step(step, loss)` (1-based step) is called after each step, e.g. for a progress bar.
    """
    if cfg.steps == 0:
        return params, []
    opt = optax.adam(_schedule(cfg))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: _loss(graphdef, p, batch))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    multi = jax.process_count() > 1
    mesh = jax.tree.leaves(params)[0].sharding.mesh if multi else None
    rng = np.random.default_rng(seed)
    losses = []
    n = len(prompts)
    for i in range(cfg.steps):
        idx = rng.choice(n, size=min(cfg.batch_size, n), replace=False)
        batch = pack_pairs([prompts[j] for j in idx], [targets[j] for j in idx], pad_id)
        if multi:  # jit takes no numpy next to arrays spanning processes
            batch = {k: multihost.replicated(v, mesh) for k, v in batch.items()}
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
        if on_step is not None:
            on_step(i + 1, losses[-1])
    return params, losses
