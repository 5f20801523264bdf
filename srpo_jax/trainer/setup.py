"""Training run set-up (DESIGN.md section 1): the only module that knows every part.

The run is three parts: this module builds everything from the config (`setup` -> `Run`);
srpo_jax/trainer/step.py is one step (rollout -> rewards -> routing -> pack -> learner -> weight
sync); srpo_jax/trainer/loop.py is the loop around it (evaluation, checkpoints, time budget,
signals, the typed resume state). `run` wires the three.

Per step: sample prompts -> generate G rollouts each with the configured engine (retried
on failure; a step only ever sees a whole batch) -> score with the verifiers -> group
advantages, correctness and teacher information -> route -> teacher prompts for the
routed rollouts only -> pack static-shape batch -> jitted train_step -> push the new
weights to the engine -> metrics; evaluation every N steps; checkpoint every N steps, at
the end, on SIGTERM and before aborting.

Exact resume. A run killed at any point and restarted with the same command continues
exactly as the uninterrupted run (on CPU: bit-identical metrics, params, EMA teacher and
optimizer state; tests/e2e/test_resume.py). Everything a step depends on is either in the
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

Testing aids (fault injection): srpo_jax/trainer/faults.py, read from the environment once, in
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

from srpo_jax import multihost
from srpo_jax.algo import routing
from srpo_jax.config import Config, check_mesh, to_dict
from srpo_jax.data import datasets, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.learner import train_step as learner
from srpo_jax.model import hf_io
from srpo_jax.model.qwen3 import Qwen3, create_sharded_model
from srpo_jax.rollout.engine import RolloutError
from srpo_jax.sharding import make_mesh
from srpo_jax.trainer import checkpoint, evaluation, probe, report
from srpo_jax.trainer import metrics as metrics_lib
from srpo_jax.trainer import progress as progress_lib
from srpo_jax.trainer.faults import FaultInjection
from srpo_jax.trainer.loop import EVAL_SCORES, Preemption, ResumeState, TrainingAborted, train_loop
from srpo_jax.trainer.step import generate_whole, prepare_step, stop_ids
from srpo_jax.trainer.warmup import run_sft

__all__ = [
    "Run",
    "RolloutError",
    "TrainingAborted",
    "generate_whole",
    "prepare_step",
    "run",
    "setup",
]


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
        if split == "warmup":  # SFT pairs that teach format and copying, never a code
            return synthetic.make_warmup_split(d.synthetic_warmup_size, d.shuffle_seed)
        train, test = synthetic.make_synthetic_splits(
            d.synthetic_train_size, d.synthetic_test_size, seed=d.shuffle_seed
        )
        return train if split == "train" else test
    examples = datasets.load_split(d.data_dir, d.task, split)
    if split == "train" and any(routing.has_reprompt_layout(ex.prompt) for ex in examples):
        # Its reprompt would append a second demonstration, a layout no teacher has seen.
        raise datasets.DataError(
            f"data.task={d.task}: a training question already ends in the teacher-prompt "
            "layout (a hint); its reprompt would carry two demonstrations"
        )
    return examples


def _make_engine(cfg: Config, model_cfg, params, mesh, pad_id, workdir):
    if cfg.rollout.engine == "jax":
        from srpo_jax.rollout.jax_engine import JaxEngine

        return JaxEngine(
            model_cfg,
            params,
            mesh=mesh,
            pad_id=pad_id,
            length_buckets_per_octave=cfg.data.length_buckets_per_octave,
        )
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


def _warmup(cfg, graphdef, params, train_set, tokenizer, view: progress_lib.Progress | None = None):
    """Supervised warm-up (demo only; see sft.py); `view` shows its steps (a new one, printing
    to stdout, when not given). The synthetic task trains on its own warm-up split (format and
    copying, never a code: synthetic.py) and then prints the copy probe; other tasks train on
    the gold training answers. Returns (params, the probe's result or None)."""
    if cfg.warmup.steps == 0:
        return params, None
    view = view or progress_lib.Progress()
    if cfg.data.task == "synthetic":
        examples = _examples(cfg, "warmup")
        train_set = datasets.PromptSet(examples, tokenizer, cfg.algo.max_reprompt_len)
    view.start("warm-up", cfg.warmup.steps, shown=progress_lib.WARMUP_METRICS)
    targets = []
    for ex in train_set.examples:
        text = synthetic.answer_text(ex.answer) if ex.kind == "mcq" else ex.answer
        targets.append(tokenizer.encode(text, add_special_tokens=False) + [stop_ids(tokenizer)[0]])
    on_step = lambda step, loss: view.update(step, {"loss": loss})
    params, _ = run_sft(
        graphdef,
        params,
        train_set.prompt_ids,
        targets,
        cfg.warmup,
        seed=cfg.train.seed,
        pad_id=tokenizer.pad_token_id,
        on_step=on_step,
    )
    result = None
    # The step-0 copy probe (issue 17); its scorer feeds host arrays, so one process only.
    if cfg.data.task == "synthetic" and jax.process_count() == 1:
        result = copy_probe(cfg, graphdef, params, tokenizer)
        view.write(result.line())
    return params, result


def copy_probe(cfg: Config, graphdef, params, tokenizer) -> probe.ProbeResult:
    """The copy probe on the synthetic test split with teacher = student (phi_0 = theta_0)."""
    return probe.copy_probe(
        probe.model_score_fn(graphdef, params, tokenizer.pad_token_id),
        tokenizer,
        _examples(cfg, "test"),
        stop_ids(tokenizer)[0],
        max_reprompt_len=cfg.algo.max_reprompt_len,
        with_format=True,
    )


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
    """Everything one training run is made of, built by `setup` from the config."""

    cfg: Config
    workdir: pathlib.Path
    log: Any  # log(msg): printed once on the leader, above the progress bar (Progress.write)
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


def console(cfg: Config) -> progress_lib.Progress:
    """What the console shows (a bar or plain lines, each message once; process 0 only)."""
    return progress_lib.Progress(
        log_every=cfg.log.log_every, bar=cfg.log.progress, enabled=multihost.is_leader()
    )


def _metrics_writer(cfg: Config, wd: pathlib.Path, *, resume_step: int):
    # A fresh run starts a fresh log (resume_step -1): lines of an earlier run without
    # checkpoints go; a resumed one drops the lines written after its checkpoint.
    return metrics_lib.MetricsWriter(
        wd,
        tensorboard=cfg.log.tensorboard,
        resume_step=resume_step,
        enabled=multihost.is_leader(),
        wandb_project=cfg.log.wandb_project if cfg.log.wandb else None,
        run_config=to_dict(cfg),
    )


def _restore_or_start(
    cfg, wd, ckpt, sampler, seeds, graphdef, params, train_set, tokenizer, mesh, *, view
):
    """(state, resume state, metrics writer): from the latest checkpoint, else fresh."""
    lcfg = learner.StepSettings.from_config(cfg)
    restored = None
    if ckpt.latest_step() is not None:
        # The restore target carries the shardings the fresh state would be born with.
        restored = ckpt.restore(checkpoint.abstract_like(learner.init_state(params, lcfg, mesh)))
    if restored is None:
        if multihost.is_leader():  # a fresh run starts fresh per-question evaluation scores
            (wd / EVAL_SCORES).unlink(missing_ok=True)
        params, _ = _warmup(cfg, graphdef, params, train_set, tokenizer, view)
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
        view.write(f"resumed from checkpoint step {restored.step} in {wd / 'checkpoints'}")
    return state, resume, _metrics_writer(cfg, wd, resume_step=resume_step)


def setup(
    cfg: Config, wd: pathlib.Path, faults: FaultInjection, view: progress_lib.Progress
) -> Run:
    """Builds every part of the run from `cfg` (resuming from wd's latest checkpoint); its
    messages and the warm-up's steps go to `view`."""
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
    train_set = datasets.PromptSet(_examples(cfg, "train"), tokenizer, cfg.data.max_prompt_len)
    test_set = datasets.PromptSet(_examples(cfg, "test"), tokenizer, cfg.data.max_prompt_len)
    if multihost.is_leader():  # the resolved config to the workdir, one screen of it here
        report.write_config(cfg, wd)
    # Printed before the weights load (parameter count from the abstract model), so a bad
    # checkpoint's error line follows the data counts instead of replacing them.
    abstract = nnx.state(nnx.eval_shape(lambda: Qwen3(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    view.write(report.config_summary(cfg, wd, model_cfg, abstract, train_set, test_set))
    graphdef, params = _initial_params(cfg, model_cfg, mesh)
    ckpt = checkpoint.CheckpointManager(wd / "checkpoints", keep=cfg.checkpoint.keep)
    sampler = datasets.EpochSampler(len(train_set), cfg.data.shuffle_seed)
    seeds = {
        "train_seed": cfg.train.seed,
        "shuffle_seed": cfg.data.shuffle_seed,
        "demo_seed": cfg.algo.demo_seed,
    }
    state, resume, writer = _restore_or_start(
        cfg, wd, ckpt, sampler, seeds, graphdef, params, train_set, tokenizer, mesh, view=view
    )
    del params
    engine = _make_engine(cfg, model_cfg, state.params, mesh, tokenizer.pad_token_id, wd)
    engine.update_weights(state.params, resume.weight_version)
    return Run(
        cfg=cfg,
        workdir=wd,
        log=view.write,
        train_set=train_set,
        tokenizer=tokenizer,
        learner=learner.Learner(learner.StepSettings.from_config(cfg), graphdef, mesh),
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
    progress: progress_lib.Progress | None = None,
) -> dict:
    """Trains per `cfg`; resumes from the latest checkpoint in workdir. Returns a summary.

    faults: the testing aids (None: read once from the environment, srpo_jax/trainer/faults.py).
    progress: the console view (None: `console(cfg)`); its `update(step, metrics)` is called
    once per finished step, and every message of the run goes through its `write`.
    """
    faults = FaultInjection.from_env() if faults is None else faults
    view = console(cfg) if progress is None else progress
    with Preemption() as preempt:
        try:
            return train_loop(setup(cfg, pathlib.Path(workdir), faults, view), preempt, view)
        finally:
            # Ends the bar's line on an abort too, so main's error line starts on its own.
            view.close()
