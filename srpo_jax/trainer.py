"""The training loop (DESIGN.md section 1): the only module that knows every part.

Per step: sample prompts -> generate G rollouts each with the configured engine (retried
on failure; a step only ever sees a whole batch) -> score with the verifiers -> group
advantages, correctness and teacher information -> route -> teacher prompts for the
routed rollouts only -> pack static-shape batch -> jitted train_step -> push the new
weights to the engine -> metrics; evaluation every N steps; checkpoint every N steps, at
the end, on SIGTERM and before aborting.

Exact resume. A run killed at any point and restarted with the same command continues
exactly as the uninterrupted run (on CPU: bit-identical metrics, params, EMA teacher and
optimizer state; tests/test_resume.py). Everything a step depends on is either in the
checkpoint or a pure function of it: the train state (params, teacher, optimizer state and
`state.step`, which is also the LR schedule position), the data cursor and shuffle seed,
the rollout weight version, and the seeds. There is no carried PRNG state: the rollout
noise of step t is fold(seed, t, row) inside the engine, evaluation folds its own offset
seed (so it never perturbs training), routing's sibling order is seeded by algo.demo_seed.
Metric lines written after the restored checkpoint are dropped and produced again.

Preemption. SIGTERM (from the start of `run`) sets a flag; the loop finishes the current
step, skips that step's evaluation (it runs first thing after the resume instead), writes
a checkpoint and returns normally, so the process exits 0 within one step's time.

Numerical faults. A step whose every update had a non-finite gradient norm is skipped by
the learner; after optim.max_consecutive_skips such steps in a row the trainer checkpoints
the last good state and raises TrainingAborted naming the step (main prints one line and
exits 1).

Testing aids (fault injection, read from the environment): srpo_jax/faults.py.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from srpo_jax import batching, checkpoint, evaluation, learner, multihost
from srpo_jax import metrics as metrics_lib
from srpo_jax.algo import advantages as adv_lib
from srpo_jax.algo import routing
from srpo_jax.config import Config, check_mesh, to_dict
from srpo_jax.data import datasets, rewards, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.faults import FaultInjection, poison
from srpo_jax.model import hf_io
from srpo_jax.rollout.engine import FINISH_ABORT, RolloutError, SamplingParams
from srpo_jax.sft import SFTConfig, run_sft
from srpo_jax.sharding import create_sharded_model, make_mesh


class TrainingAborted(RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps); the message says why."""


def learner_config(cfg: Config) -> learner.LearnerConfig:
    a, o, t = cfg.algo, cfg.optim, cfg.train
    return learner.LearnerConfig(
        method=a.method,
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        dual_clip=a.dual_clip,
        tis_cap=a.tis_cap,
        is_clip=a.is_clip,
        topk=a.topk,
        alpha=a.alpha,
        tau=a.tau,
        add_tail=a.add_tail,
        entropy_over=a.entropy_over,
        temperature=cfg.rollout.temperature or 1.0,
        loss_agg=a.loss_agg,
        adv_mix_lambda=a.adv_mix_lambda,
        ema_rate=a.ema_rate,
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        b1=o.b1,
        b2=o.b2,
        weight_decay=o.weight_decay,
        grad_clip=o.grad_clip,
        loss_impl=t.loss_impl,
        fused_implementation=t.fused_implementation,
        fused_grad_mode=t.fused_grad_mode,
        chunk_size=t.chunk_size,
    )


# ----------------------------------------------------------------------------- setup


def _tokenizer(cfg: Config, workdir: pathlib.Path):
    path = cfg.tokenizer.path
    if not path:
        path = workdir / "tokenizer"
        if multihost.is_leader() and not (path / "tokenizer.json").is_file():
            tok_lib.build_tiny_tokenizer(path)
        if jax.process_count() > 1:  # the others read what process 0 wrote
            multihost_utils.sync_global_devices("tokenizer written")
    return tok_lib.load_tokenizer(path)


def _examples(cfg: Config, split: str) -> list[datasets.Example]:
    d = cfg.data
    if d.task == "synthetic":
        train, test = synthetic.make_synthetic_splits(
            d.synthetic_train_size, d.synthetic_test_size, seed=d.shuffle_seed
        )
        return train if split == "train" else test
    return datasets.load_split(d.data_dir, d.task, split)


def _stop_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(i for i in ids if i is not None and i >= 0))


def _make_engine(cfg: Config, model_cfg, params, mesh, pad_id, workdir):
    if cfg.rollout.engine == "jax":
        from srpo_jax.rollout.jax_engine import JaxEngine

        return JaxEngine(model_cfg, params, mesh=mesh, pad_id=pad_id)
    from srpo_jax.rollout import sglang

    return sglang.engine_from_config(cfg.rollout.sglang, model_cfg, params, workdir=workdir)


def _initial_params(cfg: Config, model_cfg, mesh):
    if cfg.model.hf_path:
        model = hf_io.load_hf(cfg.model.hf_path, config_overrides=cfg.model.overrides, mesh=mesh)
    else:
        model = create_sharded_model(model_cfg, mesh, seed=cfg.train.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def _warmup(cfg, graphdef, params, train_set, tokenizer, log):
    """Supervised warm-up on the gold answers (demo only; see sft.py)."""
    if cfg.train.sft_warmup_steps == 0:
        return params
    targets = []
    for ex in train_set.examples:
        text = synthetic.answer_text(ex.answer) if ex.kind == "mcq" else ex.answer
        targets.append(tokenizer.encode(text, add_special_tokens=False) + [_stop_ids(tokenizer)[0]])
    sft_cfg = SFTConfig(steps=cfg.train.sft_warmup_steps, lr=cfg.train.sft_lr, seed=cfg.train.seed)
    params, _ = run_sft(
        graphdef, params, train_set.prompt_ids, targets, sft_cfg, tokenizer.pad_token_id, log=log
    )
    return params


# ----------------------------------------------------------------------------- one step


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
        except Exception as e:  # any engine failure (device, HTTP, partial result) is retried
            last = e
            logging.warning(
                "step %d: rollout attempt %d/%d failed: %s: %s",
                step + 1, attempt + 1, max_retries + 1, type(e).__name__, e,
            )  # fmt: skip
    raise RolloutError(
        f"step {step + 1}: rollout failed {max_retries + 1} times "
        f"(config.rollout.max_retries={max_retries}); last error: {type(last).__name__}: {last}"
    ) from last


# One compiled dispatch instead of the ~9 eager jnp ops (and their host syncs) that
# group_advantages costs when called op by op on host arrays; same operations.
_group_advantages = jax.jit(adv_lib.group_advantages, static_argnums=1)


@dataclasses.dataclass
class HostStep:
    """The host-side products of one step, kept for metrics."""

    batch: dict
    metrics: dict


def prepare_step(
    cfg: Config, step: int, engine, train_set, sampler, tokenizer, faults=None
) -> HostStep:
    """Rollouts, rewards, routing and teacher prompts for one step -> learner batch."""
    a = cfg.algo
    g = a.group_size
    t0 = time.perf_counter()
    idx = sampler.next_indices(cfg.train.prompts_per_step)
    examples = [train_set.examples[i] for i in idx]
    prompts = [train_set.prompt_ids[i] for i in idx]
    sp = SamplingParams(
        max_new_tokens=cfg.data.max_response_len,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_token_ids=_stop_ids(tokenizer),
        seed=cfg.train.seed,
    )
    ro = generate_whole(
        engine, prompts, g, sp, step=step, max_retries=cfg.rollout.max_retries, faults=faults
    )
    t1 = time.perf_counter()

    texts = [
        tokenizer.decode(ro.completion(r), skip_special_tokens=True) for r in range(ro.num_rows)
    ]
    rew = np.array(
        [
            rewards.reward(examples[r // g].kind, texts[r], examples[r // g].answer)
            if ro.finish_reasons[r] != FINISH_ABORT
            else 0.0
            for r in range(ro.num_rows)
        ],
        np.float64,
    )
    t2 = time.perf_counter()

    seed = a.demo_seed if a.demo_seed else None
    sdpo_mask, teacher_idx = routing.route(rew, g, a.method, a.success_threshold, seed=seed)
    info = routing.teacher_info(rew, g, a.success_threshold, seed=seed)
    teacher_prompts: dict[int, Any] = {}
    keep = np.ones(ro.num_rows, bool)
    for r in np.flatnonzero(teacher_idx >= 0):
        msgs = datasets.messages(examples[r // g])
        ids = routing.render_teacher_prompt(
            tokenizer, msgs, texts[int(teacher_idx[r])], a.max_reprompt_len
        )
        if ids is None:
            keep[r] = False
        else:
            teacher_prompts[int(r)] = ids.tolist()
    sdpo_mask, teacher_idx = routing.drop_teachers(sdpo_mask, teacher_idx, keep)
    t3 = time.perf_counter()

    adv = np.asarray(_group_advantages(rew, g), np.float64)
    grpo_rows = np.zeros(ro.num_rows, bool) if a.method == "sdpo" else ~sdpo_mask
    rows = batching.StepRows(
        prompt_ids=[prompts[r // g] for r in range(ro.num_rows)],
        response_ids=[ro.completion(r) for r in range(ro.num_rows)],
        rollout_logprobs=[
            ro.logprobs_BR[r, : ro.lengths_B[r]].tolist() for r in range(ro.num_rows)
        ],
        advantages=adv,
        grpo_rows=grpo_rows,
        sdpo_rows=sdpo_mask,
        teacher_rows=teacher_idx >= 0,
        teacher_prompt_ids=teacher_prompts,
    )
    micro_rows = cfg.train.micro_batch_rows or cfg.train.mini_batch_prompts * g
    batch = batching.build_train_batch(
        rows,
        num_minibatches=cfg.num_updates_per_step,
        micro_batch_rows=micro_rows,
        pad_id=tokenizer.pad_token_id,
        # Teacher rows per micro-batch come in at most 3 sizes besides 0 (b/4, b/2, b), so the
        # train step compiles a bounded number of variants whatever the routed fraction.
        min_teacher_rows=max(1, micro_rows // 4),
    )
    t4 = time.perf_counter()
    failures = ~info.correct
    lengths = ro.lengths_B.astype(np.float64)
    host_metrics = {
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
        "time/rollout_s": t1 - t0,
        "time/reward_s": t2 - t1,
        "time/teacher_s": t3 - t2,  # host side: routing and teacher prompts
        "time/packing_s": t4 - t3,
    }
    return HostStep(batch=batch, metrics=host_metrics)


def _logp_gap_p99(dev_metrics: dict, batch: dict) -> dict:
    """Host-side 99th percentile of the per-token log-prob gap if the learner gave tokens."""
    tokens = dev_metrics.pop("logp_gap/tokens", None)
    if tokens is None or "logp_gap/p99" in dev_metrics:
        return {}
    mask = np.asarray(batch["response_mask"]) > 0
    gaps = np.asarray(tokens)[mask]
    return {"logp_gap/p99": float(np.percentile(gaps, 99)) if gaps.size else 0.0}


def _summary_aliases(m: dict) -> dict:
    """Short names for the curves and dashboards: teacher entropy, SDPO weight spread and
    GRPO clip fractions (the learner's objective metrics are prefixed "loss/"). Teacher and
    weight statistics only exist on steps that routed tokens to SDPO."""
    out = {}
    for name in ("clip_high_frac", "clip_low_frac", "clip_dual_frac"):
        if f"loss/grpo_{name}" in m:
            out[f"grpo/{name}"] = m[f"loss/grpo_{name}"]
    if m.get("sdpo/tokens", 0.0) > 0:
        if "loss/teacher_entropy_mean" in m:
            out["teacher/entropy_mean"] = m["loss/teacher_entropy_mean"]
        if "loss/sdpo_weight_max" in m:
            out["sdpo/weight_spread"] = m["loss/sdpo_weight_max"] - m["loss/sdpo_weight_min"]
            out["sdpo/weight_std"] = m["loss/sdpo_weight_std"]
    return out


# ----------------------------------------------------------------------------- the loop


class _Preemption:
    """SIGTERM sets a flag; the loop finishes the step, checkpoints and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: finishing the current step, then checkpointing")
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old)


def run(cfg: Config, workdir: str | pathlib.Path) -> dict:
    """Trains per `cfg`; resumes from the latest checkpoint in workdir. Returns a summary."""
    with _Preemption() as preempt:
        return _run(cfg, pathlib.Path(workdir), preempt)


def _run(cfg: Config, wd: pathlib.Path, preempt: _Preemption) -> dict:
    wd.mkdir(parents=True, exist_ok=True)
    faults = FaultInjection.from_env()

    def log(msg):
        logging.info(msg)
        if multihost.is_leader():
            print(msg, flush=True)

    check_mesh(cfg, jax.device_count())
    mesh = make_mesh(cfg.mesh)
    tokenizer = _tokenizer(cfg, wd)
    model_cfg = cfg.model.architecture()
    if len(tokenizer) > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model_cfg.vocab_size}: set config.model.overrides.vocab_size"
        )
    train_set = datasets.PromptSet(_examples(cfg, "train"), tokenizer, cfg.data.max_prompt_len)
    test_set = datasets.PromptSet(_examples(cfg, "test"), tokenizer, cfg.data.max_prompt_len)
    log(
        f"data: {len(train_set)} train prompts ({train_set.num_filtered} filtered as too long), "
        f"{len(test_set)} test prompts ({test_set.num_filtered} filtered)"
    )
    graphdef, params = _initial_params(cfg, model_cfg, mesh)
    lcfg = learner_config(cfg)
    ckpt = checkpoint.CheckpointManager(wd / "checkpoints", keep=cfg.checkpoint.keep)
    sampler = datasets.EpochSampler(len(train_set), cfg.data.shuffle_seed)
    seeds = {
        "train_seed": cfg.train.seed,
        "shuffle_seed": cfg.data.shuffle_seed,
        "demo_seed": cfg.algo.demo_seed,
    }
    restored = None
    if ckpt.latest_step() is not None:
        # The restore target carries the shardings the fresh state would be born with.
        restored = ckpt.restore(checkpoint.abstract_like(learner.init_state(params, lcfg, mesh)))
    if restored is None:
        params = _warmup(cfg, graphdef, params, train_set, tokenizer, log)
        state = learner.init_state(params, lcfg, mesh)
        host = {"train_elapsed_s": 0.0, "weight_version": 0, "evals": [], "pending_eval": -1}
        # A fresh run starts a fresh log: lines of an earlier run without checkpoints go.
        writer = metrics_lib.MetricsWriter(
            wd, tensorboard=cfg.log.tensorboard, resume_step=-1, enabled=multihost.is_leader()
        )
    else:
        state, host = restored.state, restored.host_state
        if host.get("seeds", seeds) != seeds:
            logging.warning(
                "resuming with seeds %s, but the checkpoint was written with %s: the run "
                "will not continue as the original would have",
                seeds, host["seeds"],
            )  # fmt: skip
        sampler.load_state_dict(host["sampler"])
        writer = metrics_lib.MetricsWriter(
            wd,
            tensorboard=cfg.log.tensorboard,
            resume_step=restored.step,
            enabled=multihost.is_leader(),
        )
        log(f"resumed from checkpoint step {restored.step} in {wd / 'checkpoints'}")
    del params

    lrn = learner.Learner(lcfg, graphdef, mesh)
    engine = _make_engine(cfg, model_cfg, state.params, mesh, tokenizer.pad_token_id, wd)
    engine.update_weights(state.params, host["weight_version"])
    evaluator = evaluation.Evaluator(cfg.eval, test_set, tokenizer, cfg.data.max_response_len)
    start_step = int(multihost.to_host(state.step))
    budget_s = cfg.train.time_budget_hours * 3600.0

    def save(step_done):
        host_state = dict(host, sampler=sampler.state_dict(), seeds=seeds, config=to_dict(cfg))
        host_state["step"] = step_done
        ckpt.save(step_done, state, host_state)

    def evaluate(step_done):
        res = evaluator.run(engine, step=step_done, seed=cfg.train.seed)
        res["time/train_elapsed_s"] = host["train_elapsed_s"]
        writer.write(step_done, res)
        host["evals"].append([host["train_elapsed_s"], res["eval/avg_at_k"]])
        log(
            f"step {step_done}: eval avg@{cfg.eval.num_samples} = {res['eval/avg_at_k']:.3f}, "
            f"maj@{cfg.eval.num_samples} = {res['eval/maj_at_k']:.3f}"
        )

    def eval_due(step_done):
        return cfg.eval.every_steps and step_done % cfg.eval.every_steps == 0

    if start_step == 0 and eval_due(0):
        evaluate(0)
    if host.get("pending_eval", -1) == start_step and start_step > 0:
        evaluate(start_step)  # skipped by the preemption that ended the previous run
        host["pending_eval"] = -1
    for step in range(start_step, cfg.train.num_steps):
        n = step + 1  # the step's number in metrics.jsonl: steps completed after it
        t_step = time.perf_counter()
        prepared = prepare_step(cfg, step, engine, train_set, sampler, tokenizer, faults)
        batch = poison(prepared.batch) if n in faults.nan_steps else prepared.batch
        if faults.kill_point == "mid_step" and faults.kill_step == n:
            ckpt.wait()  # an async save still in flight would make the restart point vary
            faults.maybe_kill("mid_step", n)
        t_learn = time.perf_counter()
        state, dev_metrics = lrn.train_step(state, batch)
        jax.block_until_ready(state)
        t_sync = time.perf_counter()
        sync = engine.update_weights(state.params, n)
        host["weight_version"] = n
        # One fetch for the metrics and the two counters the loop reads (per-token metrics
        # span processes).
        dev_metrics, skipped_total, consecutive = multihost.tree_to_host(
            (dev_metrics, state.skipped_updates, state.consecutive_skips)
        )
        t_done = time.perf_counter()
        host["train_elapsed_s"] += t_done - t_step
        m = dict(prepared.metrics)
        m.update(_logp_gap_p99(dev_metrics, batch))
        m.update({k: float(v) for k, v in dev_metrics.items()})
        m.update(_summary_aliases(m))
        m.update(sync)
        m["skipped_updates_total"] = float(skipped_total)
        m["time/learner_s"] = t_sync - t_learn
        m["time/sync_s"] = t_done - t_sync
        m["time/step_s"] = t_done - t_step
        m["time/train_elapsed_s"] = host["train_elapsed_s"]
        m["compile/train_step_variants"] = float(lrn.num_compiled)
        if hasattr(engine, "num_traces"):
            m["compile/generate_traces"] = float(engine.num_traces)
        if hasattr(engine, "num_restarts"):
            m["rollout/server_restarts"] = float(engine.num_restarts)
        writer.write(n, m)
        consecutive = int(consecutive)
        if consecutive >= cfg.optim.max_consecutive_skips:
            save(n)
            ckpt.wait()
            raise TrainingAborted(
                f"step {n}: {consecutive} consecutive steps had a non-finite gradient norm "
                f"(limit optim.max_consecutive_skips={cfg.optim.max_consecutive_skips}); the "
                f"last good params are in the checkpoint of step {n} in {wd / 'checkpoints'}"
            )
        if eval_due(n):
            if preempt.requested:
                host["pending_eval"] = n  # bounded exit time: evaluate after the resume
            else:
                evaluate(n)
        done = n == cfg.train.num_steps
        over_budget = budget_s > 0 and host["train_elapsed_s"] >= budget_s
        every = cfg.checkpoint.every_steps
        if done or over_budget or preempt.requested or (every and n % every == 0):
            save(n)
            if faults.kill_point == "after_checkpoint" and faults.kill_step == n:
                ckpt.wait()
                faults.maybe_kill("after_checkpoint", n)
        if preempt.requested:
            log(f"preempted: checkpoint written at step {n}; exiting")
            break
        if over_budget:
            log(f"time budget of {cfg.train.time_budget_hours} h reached at step {n}")
            break
    engine.close()
    ckpt.wait()
    curves = wd / "curves.png"
    if multihost.is_leader():
        metrics_lib.plot_curves(wd / "metrics.jsonl", curves)
    table = evaluation.budget_table(host["evals"], hours=(1.0, 5.0, 10.0))
    summary = {
        "final_step": int(multihost.to_host(state.step)),
        "evals": host["evals"],
        "metrics": str(wd / "metrics.jsonl"),
        "curves": str(curves),
        "budget_table": table,
        "train_step_variants": lrn.num_compiled,
    }
    writer.close()
    accs = [acc for _, acc in host["evals"]]
    if accs:
        log(
            f"test avg@{cfg.eval.num_samples}: {accs[0]:.3f} at the first evaluation -> "
            f"{accs[-1]:.3f} at the last (best {max(accs):.3f})"
        )
    log(f"metrics: {summary['metrics']}\ncurves:  {summary['curves']}")
    return summary
