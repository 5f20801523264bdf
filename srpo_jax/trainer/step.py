"""One training step, host side and device side (DESIGN.md section 1):

    rollout -> rewards -> routing and teacher prompts -> pack -> learner -> weight sync

`prepare_step` runs the host half and returns the packed `TrainBatch` with its host
metrics; `learn_and_sync` runs the jitted learner on it, pushes the new weights to the
rollout engine and assembles the step's metrics line. Neither knows about checkpoints,
evaluation or the time budget (srpo_jax/trainer/loop.py) or how the parts are built
(srpo_jax/trainer/setup.py).

Retries. `generate_whole` retries a generation only on the rollout's own failures
(`RETRYABLE`: RolloutError, OS-level/HTTP errors, a device runtime error) or a partial
batch; any other exception is a bug in our code and propagates the first time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from srpo_jax import multihost
from srpo_jax.algo import advantages as adv_lib
from srpo_jax.algo import routing
from srpo_jax.data import datasets, rewards
from srpo_jax.learner import batch as batching
from srpo_jax.learner import packing
from srpo_jax.model import attention
from srpo_jax.rollout.engine import FINISH_ABORT, FINISH_LENGTH, RolloutError, SamplingParams
from srpo_jax.trainer.faults import FaultInjection

# A rollout's own failures: the engine's error, a socket/HTTP error (requests' exceptions
# are OSErrors), a device runtime error. Anything else is a bug and is not retried.
RETRYABLE = (RolloutError, OSError, jax.errors.JaxRuntimeError)


def stop_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(i for i in ids if i is not None and i >= 0))


def generate_whole(
    engine,
    prompts,
    n: int,
    sp: SamplingParams,
    *,
    step: int,
    max_retries: int,
    faults: FaultInjection | None = None,
):
    """engine.generate, retried up to `max_retries` times; returns only a complete batch.

    A result that lacks rows (a partial batch) counts as a failure, so a training step never
    consumes one. Sampling noise is a function of (seed, step, row), so a retry draws exactly
    what the failed attempt would have (resume stays exact).
    """
    last: Exception | None = None
    for attempt in range(max_retries + 1):
        try:
            if faults is not None:
                faults.before_generate(step, attempt, engine)
            ro = engine.generate(prompts, n, sp, step=step)
            want = np.repeat(np.arange(len(prompts), dtype=np.int32), n)
            if ro.num_rows != len(want) or not np.array_equal(ro.prompt_index_B, want):
                raise RolloutError(
                    f"engine returned {ro.num_rows} rows for {len(prompts)} prompts x {n}"
                )
            return ro
        except RETRYABLE as e:
            last = e
            logging.warning(
                "step %d: rollout attempt %d/%d failed: %s: %s",
                step + 1, attempt + 1, max_retries + 1, type(e).__name__, e,
            )  # fmt: skip
    raise RolloutError(
        f"step {step + 1}: rollout failed {max_retries + 1} times "
        f"(config.rollout.max_retries={max_retries}); last error: {type(last).__name__}: {last}"
    ) from last


@dataclasses.dataclass
class HostStep:
    """The host-side products of one step, kept for metrics."""

    batch: batching.TrainBatch
    metrics: dict


def _scores(cfg, ro, examples, tokenizer) -> tuple[list[str], np.ndarray]:
    """Decoded completions and their verifier rewards (aborted rows score 0, and so do rows cut
    at max_response_len when data.score_truncated is off)."""
    g = cfg.algo.group_size
    unscored = {FINISH_ABORT} if cfg.data.score_truncated else {FINISH_ABORT, FINISH_LENGTH}
    texts = [
        tokenizer.decode(ro.completion(r), skip_special_tokens=True) for r in range(ro.num_rows)
    ]
    rew = np.array(
        [
            rewards.reward(examples[r // g].kind, texts[r], examples[r // g].answer)
            if ro.finish_reasons[r] not in unscored
            else 0.0
            for r in range(ro.num_rows)
        ],
        np.float64,
    )
    return texts, rew


def _route(cfg, rew, examples, texts, tokenizer):
    """Teacher info (once), the method's routing and the teacher prompts of routed rows.

    Returns (info, sdpo_mask, teacher_idx, teacher_prompts, keep); rows whose reprompt does
    not fit lose their teacher (routing.drop_teachers)."""
    a, g = cfg.algo, cfg.algo.group_size
    seed = a.demo_seed if a.demo_seed else None
    info = routing.teacher_info(rew, g, a.success_threshold, seed=seed)
    sdpo_mask, teacher_idx = routing.route(rew, g, a.method, info=info)
    teacher_prompts: dict[int, Any] = {}
    keep = np.ones(len(rew), bool)
    for r in np.flatnonzero(teacher_idx >= 0):
        msgs = datasets.messages(examples[r // g])
        ids = routing.render_teacher_prompt(
            tokenizer, msgs, texts[int(teacher_idx[r])], a.max_reprompt_len
        )
        if ids is None:
            keep[r] = False
        else:
            teacher_prompts[int(r)] = ids
    sdpo_mask, teacher_idx = routing.drop_teachers(sdpo_mask, teacher_idx, keep)
    return info, sdpo_mask, teacher_idx, teacher_prompts, keep


def _pack(cfg, ro, prompts, rew, sdpo_mask, teacher_idx, teacher_prompts, pad_id):
    """The rollout arrays go into the batch as they are; prompts are laid out once per
    prompt and repeated over its group."""
    g = cfg.algo.group_size
    prompt_ids, prompt_lens = batching.ragged(prompts)
    teacher_ids, teacher_lens = batching.ragged(
        [teacher_prompts.get(r, ()) for r in range(ro.num_rows)]
    )
    rows = batching.StepRows(
        prompt_ids_BL=np.repeat(prompt_ids, g, axis=0),
        prompt_lens_B=np.repeat(prompt_lens, g),
        response_ids_BL=ro.token_ids_BR,
        response_lens_B=ro.lengths_B,
        rollout_logprobs_BL=ro.logprobs_BR,
        advantages_B=adv_lib.group_advantages(rew, g),  # numpy in, numpy out: no device trip
        sdpo_rows_B=sdpo_mask,
        teacher_rows_B=teacher_idx >= 0,
        teacher_prompt_ids_BL=teacher_ids,
        teacher_prompt_lens_B=teacher_lens,
    )
    return packed_batch(cfg, rows, pad_id) if packs(cfg) else padded_batch(cfg, rows, pad_id)


def packed_batch(cfg, rows: batching.StepRows, pad_id: int) -> packing.PackedBatch:
    """The step's PackedBatch with the run's settings (the trainer's and the memory plan's)."""
    return packing.build_packed_batch(
        rows,
        num_minibatches=cfg.num_updates_per_step,
        pack_len=cfg.train.pack_len,
        micro_batch_tokens=cfg.train.micro_batch_tokens,
        pad_id=pad_id,
        batch_shards=cfg.mesh.data * cfg.mesh.fsdp,
    )


def padded_batch(cfg, rows: batching.StepRows, pad_id: int) -> batching.TrainBatch:
    """The step's padded TrainBatch with the run's settings (the trainer's and the plan's)."""
    g = cfg.algo.group_size
    micro_rows = cfg.train.micro_batch_rows or cfg.train.mini_batch_prompts * g
    return batching.build_train_batch(
        rows,
        num_minibatches=cfg.num_updates_per_step,
        micro_batch_rows=micro_rows,
        pad_id=pad_id,
        buckets_per_octave=cfg.data.length_buckets_per_octave,
        # Teacher rows per micro-batch come in at most 3 sizes besides 0 (b/4, b/2, b), so the
        # train step compiles a bounded number of variants whatever the routed fraction.
        min_teacher_rows=max(1, micro_rows // 4),
    )


def packs(cfg) -> bool:
    """train.packed, except where attention resolves to cuDNN: the pinned jax has no packed
    cuDNN layout, so GPU runs keep the padded batch (docs/architecture.md)."""
    impl = attention.resolve(cfg.model.attention_impl, attention.current_platform())
    return cfg.train.packed and impl != "cudnn"


def _route_metrics(cfg, ro, rew, info, sdpo_mask, teacher_idx, keep) -> dict:
    grpo_rows = ~sdpo_mask if cfg.algo.method_record.grpo else np.zeros(ro.num_rows, bool)
    failures = ~info.correct
    lengths = ro.lengths_B.astype(np.float64)
    return {
        "reward/mean": float(rew.mean()),
        "reward/accuracy": float(info.correct.mean()),
        "route/sdpo_frac": float(sdpo_mask.mean()),
        "route/grpo_frac": float(grpo_rows.mean()),
        "route/teacher_frac": float((teacher_idx >= 0).mean()),
        "route/fail_no_teacher_frac": float((failures & ~info.has_teacher).mean()),
        "route/reprompt_dropped": float((~keep).sum()),
        "rollout/rows": float(ro.num_rows),
        "rollout/response_len_mean": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
        "rollout/truncated_frac": float(np.mean([f == "length" for f in ro.finish_reasons])),
    }


def sampling_params(cfg, tokenizer) -> SamplingParams:
    """How a training step samples (the same for every step; the engine folds in the step)."""
    return SamplingParams(
        max_new_tokens=cfg.data.max_response_len,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_token_ids=stop_ids(tokenizer),
        seed=cfg.train.seed,
    )


def prepare_step(cfg, step: int, engine, train_set, sampler, tokenizer, faults=None) -> HostStep:
    """Rollouts, rewards, routing and teacher prompts for one step -> learner batch."""
    t0 = time.perf_counter()
    idx = sampler.next_indices(cfg.train.prompts_per_step)
    prompts = [train_set.prompt_ids[i] for i in idx]
    sp = sampling_params(cfg, tokenizer)
    g, retries = cfg.algo.group_size, cfg.rollout.max_retries
    ro = generate_whole(engine, prompts, g, sp, step=step, max_retries=retries, faults=faults)
    rollout_s = time.perf_counter() - t0
    return build_step(cfg, step, ro, idx, train_set, tokenizer, rollout_s=rollout_s)


def build_step(cfg, step: int, ro, idx, train_set, tokenizer, *, rollout_s: float) -> HostStep:
    """Rewards, routing, teacher prompts and packing of step `step`'s (0-based) rollout `ro`
    of the prompts `idx` -> learner batch; rollout_s: the generation's wall time."""
    examples = [train_set.examples[i] for i in idx]
    prompts = [train_set.prompt_ids[i] for i in idx]
    t1 = time.perf_counter()
    texts, rew = _scores(cfg, ro, examples, tokenizer)
    t2 = time.perf_counter()
    info, sdpo_mask, teacher_idx, teacher_prompts, keep = _route(
        cfg, rew, examples, texts, tokenizer
    )
    t3 = time.perf_counter()
    batch = _pack(
        cfg, ro, prompts, rew, sdpo_mask, teacher_idx, teacher_prompts, tokenizer.pad_token_id
    )
    t4 = time.perf_counter()
    metrics = _route_metrics(cfg, ro, rew, info, sdpo_mask, teacher_idx, keep)
    metrics.update(
        {
            "time/rollout_s": rollout_s,
            "time/reward_s": t2 - t1,
            "time/teacher_s": t3 - t2,  # host side: routing and teacher prompts
            "time/packing_s": t4 - t3,
            # Step n trains version n-1 -> n; 1 in rollout.overlap's steady state.
            "rollout/weight_version_lag": float(step - ro.weight_version),
        }
    )
    return HostStep(batch=batch, metrics=metrics)


# The learner's objective statistics under their one logged name (the rest keep "loss/").
_RENAMED = {
    "loss/grpo_clip_high_frac": "grpo/clip_high_frac",
    "loss/grpo_clip_low_frac": "grpo/clip_low_frac",
    "loss/grpo_clip_dual_frac": "grpo/clip_dual_frac",
    "loss/teacher_entropy_mean": "teacher/entropy_mean",
    "loss/sdpo_weight_std": "sdpo/weight_std",
}
# Statistics over the routed SDPO tokens; a step that routed none logs its 0 as no value.
_ROUTED_STATS = ("teacher/entropy_mean", "sdpo/weight_std", "sdpo/weight_spread")


def public_names(dev: dict) -> dict:
    """The device metrics under their logged names: GRPO clip fractions, teacher entropy and
    SDPO weight spread; routed-token statistics only on steps that routed tokens to SDPO."""
    m = {_RENAMED.get(k, k): v for k, v in dev.items()}
    if "loss/sdpo_weight_max" in m:
        m["sdpo/weight_spread"] = m["loss/sdpo_weight_max"] - m["loss/sdpo_weight_min"]
    if m.get("sdpo/tokens", 0.0) <= 0:
        for k in _ROUTED_STATS:
            m.pop(k, None)
    return m


def learn_and_sync(lrn, engine, state, prepared: HostStep, batch, version: int, before_sync=None):
    """The jitted train step on `batch`, then the new weights pushed to the engine as
    `version`. Returns (state, metrics of the learner and the sync, timings).

    before_sync: called between the two (rollout.overlap: the rollout that generated beside
    the train step is collected before the engine's weights change)."""
    t_learn = time.perf_counter()
    state, dev_metrics = lrn.train_step(state, batch)
    jax.block_until_ready(state)
    t_learned = time.perf_counter()
    if before_sync is not None:
        before_sync()
    t_sync = time.perf_counter()
    sync = engine.update_weights(state.params, version)
    # One batched fetch for the metrics and the loop's two skip counters instead of a
    # blocking fetch each (per-token metrics span processes).
    dev_metrics, skipped_total, consecutive = multihost.tree_to_host(
        (dev_metrics, state.skipped_updates, state.consecutive_skips)
    )
    t_done = time.perf_counter()
    m = dict(prepared.metrics)
    m.update(public_names({k: float(v) for k, v in dev_metrics.items()}))
    m.update(sync)
    m["skipped_updates_total"] = float(skipped_total)
    m["skipped_updates_consecutive"] = float(consecutive)
    m["time/learner_s"] = t_learned - t_learn
    m["time/sync_s"] = t_done - t_sync
    m["compile/train_step_variants"] = float(lrn.num_compiled)
    if hasattr(engine, "num_traces"):
        m["compile/generate_traces"] = float(engine.num_traces)
    if hasattr(engine, "num_restarts"):
        m["rollout/server_restarts"] = float(engine.num_restarts)
    return state, m
