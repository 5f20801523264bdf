"""Training run set-up (DESIGN.md section 1): the only module that knows every part.

The run is three parts: this module builds everything from the config (`setup` -> `Run`);
srpo_jax/step.py is one step (rollout -> rewards -> routing -> pack -> learner -> weight
sync); srpo_jax/schedule.py is the loop around it (evaluation, checkpoints, time budget,
signals, the typed resume state). `run` wires the three.

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

Testing aids (fault injection): srpo_jax/faults.py, read from the environment once, in
`run`, never inside the loop.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from srpo_jax import checkpoint, evaluation, learner, multihost
from srpo_jax import metrics as metrics_lib
from srpo_jax.config import Config, check_mesh
from srpo_jax.data import datasets, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.faults import FaultInjection
from srpo_jax.model import hf_io
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.rollout.engine import RolloutError
from srpo_jax.schedule import Preemption, ResumeState, TrainingAborted, train_loop
from srpo_jax.sft import SFTConfig, run_sft
from srpo_jax.sharding import make_mesh
from srpo_jax.step import generate_whole, prepare_step, stop_ids

__all__ = [
    "Run",
    "RolloutError",
    "TrainingAborted",
    "generate_whole",
    "prepare_step",
    "run",
    "setup",
    "step_settings",
]


def step_settings(cfg: Config) -> learner.StepSettings:
    """The sections the learner reads; log-probs at the sampling temperature (greedy: 1)."""
    return learner.StepSettings(
        algo=cfg.algo, optim=cfg.optim, train=cfg.train, temperature=cfg.rollout.temperature or 1.0
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


def _make_engine(cfg: Config, model_cfg, params, mesh, pad_id, workdir):
    if cfg.rollout.engine == "jax":
        from srpo_jax.rollout.jax_engine import JaxEngine

        return JaxEngine(model_cfg, params, mesh=mesh, pad_id=pad_id)
    from srpo_jax.rollout import sglang

    return sglang.engine_from_config(cfg.rollout.sglang, model_cfg, params, workdir=workdir)


def _initial_params(cfg: Config, model_cfg, mesh):
    if cfg.model.hf_path:
        # model_cfg is the resolved architecture (config.json + overrides + dtype, remat and
        # attention settings): the learner must train exactly what the config and the plan say.
        model = hf_io.load_hf(cfg.model.hf_path, config=model_cfg, mesh=mesh)
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
        targets.append(tokenizer.encode(text, add_special_tokens=False) + [stop_ids(tokenizer)[0]])
    sft_cfg = SFTConfig(steps=cfg.train.sft_warmup_steps, lr=cfg.train.sft_lr, seed=cfg.train.seed)
    params, _ = run_sft(
        graphdef, params, train_set.prompt_ids, targets, sft_cfg, tokenizer.pad_token_id, log=log
    )
    return params


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
    """Everything one training run is made of, built by `setup` from the config."""

    cfg: Config
    workdir: pathlib.Path
    log: Any  # log(msg): absl log + print on the leader
    train_set: datasets.PromptSet
    tokenizer: Any
    learner: learner.Learner
    engine: Any  # a RolloutEngine
    evaluator: evaluation.Evaluator
    ckpt: checkpoint.CheckpointManager
    sampler: datasets.EpochSampler
    writer: metrics_lib.MetricsWriter
    seeds: dict
    faults: FaultInjection
    state: learner.TrainState
    resume: ResumeState


def _log(msg: str) -> None:
    logging.info(msg)
    if multihost.is_leader():
        print(msg, flush=True)


def _data(cfg: Config, tokenizer):
    train_set = datasets.PromptSet(_examples(cfg, "train"), tokenizer, cfg.data.max_prompt_len)
    test_set = datasets.PromptSet(_examples(cfg, "test"), tokenizer, cfg.data.max_prompt_len)
    _log(
        f"data: {len(train_set)} train prompts ({train_set.num_filtered} filtered as too long), "
        f"{len(test_set)} test prompts ({test_set.num_filtered} filtered)"
    )
    return train_set, test_set


def _restore_or_start(cfg, wd, ckpt, sampler, seeds, graphdef, params, train_set, tokenizer, mesh):
    """(state, resume state, metrics writer): from the latest checkpoint, else fresh."""
    lcfg = step_settings(cfg)
    restored = None
    if ckpt.latest_step() is not None:
        # The restore target carries the shardings the fresh state would be born with.
        restored = ckpt.restore(checkpoint.abstract_like(learner.init_state(params, lcfg, mesh)))
    if restored is None:
        params = _warmup(cfg, graphdef, params, train_set, tokenizer, _log)
        state, resume, resume_step = learner.init_state(params, lcfg, mesh), ResumeState(), -1
    else:
        state, host = restored.state, restored.host_state
        if host.get("seeds", seeds) != seeds:
            logging.warning(
                "resuming with seeds %s, but the checkpoint was written with %s: the run "
                "will not continue as the original would have",
                seeds, host["seeds"],
            )  # fmt: skip
        sampler.load_state_dict(host["sampler"])
        resume, resume_step = ResumeState.from_host(host), restored.step
        _log(f"resumed from checkpoint step {restored.step} in {wd / 'checkpoints'}")
    # A fresh run starts a fresh log (resume_step -1): lines of an earlier run without
    # checkpoints go; a resumed one drops the lines written after its checkpoint.
    writer = metrics_lib.MetricsWriter(
        wd, tensorboard=cfg.log.tensorboard, resume_step=resume_step, enabled=multihost.is_leader()
    )
    return state, resume, writer


def setup(cfg: Config, wd: pathlib.Path, faults: FaultInjection) -> Run:
    """Builds every part of the run from `cfg` (resuming from wd's latest checkpoint)."""
    wd.mkdir(parents=True, exist_ok=True)
    check_mesh(cfg, jax.device_count())
    mesh = make_mesh(cfg.mesh)
    tokenizer = _tokenizer(cfg, wd)
    model_cfg = cfg.model.architecture()
    if len(tokenizer) > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model_cfg.vocab_size}: set config.model.overrides.vocab_size"
        )
    train_set, test_set = _data(cfg, tokenizer)
    graphdef, params = _initial_params(cfg, model_cfg, mesh)
    ckpt = checkpoint.CheckpointManager(wd / "checkpoints", keep=cfg.checkpoint.keep)
    sampler = datasets.EpochSampler(len(train_set), cfg.data.shuffle_seed)
    seeds = {
        "train_seed": cfg.train.seed,
        "shuffle_seed": cfg.data.shuffle_seed,
        "demo_seed": cfg.algo.demo_seed,
    }
    state, resume, writer = _restore_or_start(
        cfg, wd, ckpt, sampler, seeds, graphdef, params, train_set, tokenizer, mesh
    )
    del params
    engine = _make_engine(cfg, model_cfg, state.params, mesh, tokenizer.pad_token_id, wd)
    engine.update_weights(state.params, resume.weight_version)
    return Run(
        cfg=cfg,
        workdir=wd,
        log=_log,
        train_set=train_set,
        tokenizer=tokenizer,
        learner=learner.Learner(step_settings(cfg), graphdef, mesh),
        engine=engine,
        evaluator=evaluation.Evaluator(cfg.eval, test_set, tokenizer, cfg.data.max_response_len),
        ckpt=ckpt,
        sampler=sampler,
        writer=writer,
        seeds=seeds,
        faults=faults,
        state=state,
        resume=resume,
    )


def run(
    cfg: Config,
    workdir: str | pathlib.Path,
    *,
    faults: FaultInjection | None = None,
    progress: Any = None,
) -> dict:
    """Trains per `cfg`; resumes from the latest checkpoint in workdir. Returns a summary.

    faults: the testing aids (None: read once from the environment, srpo_jax/faults.py).
    progress: an object whose `update(step, metrics)` is called once per finished step.
    """
    faults = FaultInjection.from_env() if faults is None else faults
    with Preemption() as preempt:
        return train_loop(setup(cfg, pathlib.Path(workdir), faults), preempt, progress)
