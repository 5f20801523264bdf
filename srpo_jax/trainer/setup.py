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
the end, on SIGTERM and before aborting. With rollout.overlap=1 the next step's rollout is
generated while this one trains (srpo_jax/trainer/overlap.py, the `RolloutFeed`).

Exact resume. A run killed at any point and restarted with the same command continues
exactly as the uninterrupted run (on CPU: bit-identical metrics, params, EMA teacher and
optimizer state; tests/e2e/test_resume.py). Everything a step depends on is either in the
checkpoint or a pure function of it: the train state (params, teacher, optimizer state and
`state.step`, which is also the LR schedule position), the data cursor and shuffle seed,
the rollout weight version, the seeds, and with rollout.overlap the generated rollout of the
next step (srpo_jax/trainer/overlap.py). There is no carried PRNG state: the rollout
noise of step t is fold(seed, t, row) inside the engine, evaluation folds its own offset
seed (so it never perturbs training), routing's sibling order is seeded by algo.demo_seed.
Metric lines written after the restored checkpoint are dropped and produced again.

A resume restores the checkpoint straight into learner.abstract_state (every leaf read onto
its shards): it neither reads model.hf_path's weights nor builds a fresh state first, so
the HF directory may be gone by then. Its config.json and tokenizer are read from the copy
a start with that directory present leaves in workdir/model_files (`_model_files`).

Preemption. SIGTERM (from the start of `run`) sets a flag; the loop finishes the current
step, skips that step's evaluation (it runs first thing after the resume instead), writes
a checkpoint and returns normally, so the process exits 0 within one step's time.

Numerical faults. A step whose every update had a non-finite gradient norm is skipped by
the learner; after optim.max_consecutive_skips such steps in a row the trainer checkpoints
the last good state and raises TrainingAborted naming the step (main prints one line and
exits 1).

A full disk. Any write of the run (checkpoint, metrics, curves, config.json, the demo
tokenizer) that runs out of space raises DiskFullError naming the path and the bytes it
needed (main prints one line and exits 1); nothing is left half-written, and rerunning the
same command once space is freed resumes from the last complete checkpoint
(srpo_jax/disk.py; tests/e2e/test_disk_full.py).

Testing aids (fault injection): srpo_jax/trainer/faults.py, read from the environment once, in
`run`, never inside the loop.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any

import jax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from srpo_jax import disk, multihost
from srpo_jax.algo import routing
from srpo_jax.config import Config, ConfigError, check_mesh, check_model, to_dict
from srpo_jax.data import datasets, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.disk import DiskFullError
from srpo_jax.learner import train_step as learner
from srpo_jax.model import hf_io
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.rollout.engine import RolloutError
from srpo_jax.sharding import make_mesh
from srpo_jax.trainer import checkpoint, evaluation, probe, report
from srpo_jax.trainer import metrics as metrics_lib
from srpo_jax.trainer import progress as progress_lib
from srpo_jax.trainer.faults import FaultInjection
from srpo_jax.trainer.loop import EVAL_SCORES, Preemption, ResumeState, TrainingAborted, train_loop
from srpo_jax.trainer.overlap import LAGGED_ENGINE_NOTE, RolloutFeed, concurrent_engine
from srpo_jax.trainer.step import generate_whole, prepare_step, stop_ids
from srpo_jax.trainer.warmup import run_sft

__all__ = [
    "DiskFullError",
    "Run",
    "RolloutError",
    "TrainingAborted",
    "generate_whole",
    "prepare_step",
    "run",
    "setup",
]


# ----------------------------------------------------------------------------- setup


MODEL_FILES = "model_files"  # the workdir's copy of model.hf_path's files, weights excepted
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack"}


def _model_files(cfg: Config, workdir: pathlib.Path) -> str:
    """Where the architecture (config.json) and a tokenizer at model.hf_path are read from.

    model.hf_path itself while it holds config.json: process 0 then copies its top-level
    files, weights excepted (config.json, the tokenizer's files), to workdir/model_files
    (`_keep_model_files`, once the run's inputs have all been read),
    so that a resume (which restores the weights from the run's checkpoint) still starts
    after the HF directory is gone. Without hf_path's config.json that copy, when there is
    one; else hf_path, whose absence then gives architecture()'s error.
    """
    hf_path = cfg.model.hf_path
    if not hf_path:
        return ""
    source, copy = pathlib.Path(hf_path), workdir / MODEL_FILES
    if (source / "config.json").is_file():
        return hf_path  # copied by _keep_model_files once every input has been read
    if (copy / "config.json").is_file():
        logging.info(
            "model.hf_path %s is gone: reading its config and tokenizer from %s", hf_path, copy
        )
        return str(copy)
    return hf_path


def _keep_model_files(cfg: Config, workdir: pathlib.Path) -> None:
    source = pathlib.Path(cfg.model.hf_path)
    if cfg.model.hf_path and (source / "config.json").is_file() and multihost.is_leader():
        _copy_small_files(source, workdir / MODEL_FILES)


def _copy_small_files(source: pathlib.Path, dest: pathlib.Path) -> None:
    """Every top-level file of `source` but the weights into `dest`, replaced whole: written
    beside it first, so a run killed mid-copy leaves the previous copy (or none)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and not set(f.suffixes) & _WEIGHT_SUFFIXES:
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def model_and_tokenizer(cfg: Config, workdir: pathlib.Path):
    """(the resolved Qwen3Config, the tokenizer), both read from `_model_files` when they
    come from model.hf_path; the tokenizer must fit the model's vocabulary."""
    files = _model_files(cfg, workdir)
    model_cfg = dataclasses.replace(cfg.model, hf_path=files).architecture()
    check_model(cfg, model_cfg.vocab_size)
    tok_path = cfg.tokenizer.path
    tok_path = files if tok_path and tok_path == cfg.model.hf_path else tok_path
    tokenizer = load_run_tokenizer(tok_path, workdir)
    if len(tokenizer) > model_cfg.vocab_size:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model_cfg.vocab_size}: set config.model.overrides.vocab_size"
        )
    return model_cfg, tokenizer


def load_run_tokenizer(path: str, workdir: pathlib.Path):
    """The tokenizer at `path`; with no path, the demo tokenizer in workdir/tokenizer (built
    there once, by process 0)."""
    if not path:
        path = workdir / "tokenizer"
        if multihost.is_leader() and not (path / "tokenizer.json").is_file():
            _build_tokenizer_whole(path)
        if jax.process_count() > 1:  # the others read what process 0 wrote
            multihost_utils.sync_global_devices("tokenizer written")
    return tok_lib.load_tokenizer(path)


def _build_tokenizer_whole(path: pathlib.Path) -> None:
    """The demo tokenizer, built beside `path` and renamed into place: a full disk leaves no
    half-written tokenizer.json for the next run to load, and raises DiskFullError."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with disk.guard(path, None):
            tok_lib.build_tiny_tokenizer(partial)
    except disk.DiskFullError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)  # an older, incomplete one
    partial.rename(path)


def split_examples(cfg: Config, split: str) -> list[datasets.Example]:
    """The examples of `split` ("train", "test" or, synthetic task only, "warmup") of the
    configured task."""
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


def make_engine(cfg: Config, model_cfg, params, mesh, pad_id, workdir, version: int = 0):
    """The rollout engine, serving `params` as weight `version` when it returns."""
    if cfg.rollout.engine == "jax":
        from srpo_jax.rollout.config import engine_weights_dtype
        from srpo_jax.rollout.jax_engine import JaxEngine

        return JaxEngine(
            model_cfg,
            params,
            mesh=mesh,
            pad_id=pad_id,
            length_buckets_per_octave=cfg.data.length_buckets_per_octave,
            weights_dtype=engine_weights_dtype(cfg.rollout, model_cfg.dtype),
            version=version,
            # Lagged sampling (rollout.overlap) reads weights the train step has donated.
            copy_weights=bool(cfg.rollout.overlap),
        )
    from srpo_jax.rollout import sglang

    engine = sglang.engine_from_config(
        cfg.rollout.sglang, model_cfg, params, workdir=workdir, version=version
    )
    if not cfg.rollout.sglang.launch_command:  # running servers: push the learner's weights
        engine.update_weights(params, version)
    return engine


def initial_params(cfg: Config, model_cfg, mesh):
    """(graphdef, params) of a fresh start: model.hf_path's weights, or a random init seeded
    by train.seed; sharded over `mesh`."""
    if cfg.model.hf_path:
        # model_cfg is the resolved architecture (config.json + overrides + dtype, remat and
        # attention settings): the learner must train exactly what the config and the plan say.
        model = hf_io.load_hf(cfg.model.hf_path, config=model_cfg, mesh=mesh)
    else:
        model = create_sharded_model(model_cfg, mesh, seed=cfg.train.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def run_warmup(
    cfg, graphdef, params, train_set, tokenizer, view: progress_lib.Progress | None = None
):
    """Supervised warm-up (demo only; see sft.py); `view` shows its steps (a new one, printing
    to stdout, when not given). The synthetic task trains on its own warm-up split (format and
    copying, never a code: synthetic.py) and then prints the copy probe; other tasks train on
    the gold training answers. Returns (params, the probe's result or None)."""
    if cfg.warmup.steps == 0:
        return params, None
    view = view or progress_lib.Progress()
    if cfg.data.task == "synthetic":
        examples = split_examples(cfg, "warmup")
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
    # The step-0 copy probe; its scorer feeds host arrays, so one process only.
    if cfg.data.task == "synthetic" and jax.process_count() == 1:
        result = copy_probe(cfg, graphdef, params, tokenizer)
        view.write(result.line())
    return params, result


def copy_probe(cfg: Config, graphdef, params, tokenizer) -> probe.ProbeResult:
    """The copy probe on the synthetic test split with teacher = student (phi_0 = theta_0)."""
    return probe.copy_probe(
        probe.model_score_fn(graphdef, params, tokenizer.pad_token_id),
        tokenizer,
        split_examples(cfg, "test"),
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
    feed: RolloutFeed


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


def _restore(ckpt, abstract: learner.TrainState, sampler, seeds: dict, view):
    """(state, resume state, step) from the latest readable checkpoint, restored straight
    into `abstract` (each leaf read onto its shards; no other state is built), or None."""
    if ckpt.latest_step() is None:
        return None
    restored = ckpt.restore(abstract)
    if restored is None:
        return None
    host = restored.host_state
    if host.get("seeds", seeds) != seeds:
        logging.warning(
            "resuming with seeds %s, but the checkpoint was written with %s: the run "
            "will not continue as the original would have",
            seeds, host["seeds"],
        )  # fmt: skip
    sampler.load_state_dict(host["sampler"])
    view.write(f"resumed from checkpoint step {restored.step} in {ckpt.directory}")
    return restored.state, ResumeState.from_host(host), restored.step


def _fresh_state(cfg: Config, model_cfg, mesh, train_set, tokenizer, view):
    """The step-0 state: HF weights (or a random init) born sharded, the warm-up, then the
    teacher and the optimizer laid out as learner.abstract_state says."""
    graphdef, params = initial_params(cfg, model_cfg, mesh)
    params, _ = run_warmup(cfg, graphdef, params, train_set, tokenizer, view)
    return learner.init_state(params, learner.StepSettings.from_config(cfg), mesh)


def _checkpoints(cfg: Config, wd: pathlib.Path, *, existing_only: bool):
    """The run's CheckpointManager, which creates its folder (so the workdir): None when
    existing_only and there is none yet (a fresh run opens it once its inputs are read)."""
    if existing_only and not (wd / "checkpoints").is_dir():
        return None
    return checkpoint.CheckpointManager(wd / "checkpoints", keep=cfg.checkpoint.keep)


def _write_run_files(cfg: Config, wd: pathlib.Path) -> None:
    """The workdir's first writes: the resolved config and the model's small files."""
    wd.mkdir(parents=True, exist_ok=True)
    if multihost.is_leader():
        report.write_config(cfg, wd)
    _keep_model_files(cfg, wd)


def _seeds(cfg: Config) -> dict:
    """The seeds a checkpoint records (a resume with other seeds warns that it diverges)."""
    return {
        "train_seed": cfg.train.seed,
        "shuffle_seed": cfg.data.shuffle_seed,
        "demo_seed": cfg.algo.demo_seed,
    }


def setup(
    cfg: Config, wd: pathlib.Path, faults: FaultInjection, view: progress_lib.Progress
) -> Run:
    """Builds every part of the run from `cfg` (resuming from wd's latest checkpoint); its
    messages and the warm-up's steps go to `view`."""
    check_mesh(cfg, jax.device_count())
    mesh = make_mesh(cfg.mesh)
    # Every input is read and checked before anything goes to the workdir: bad input leaves
    # it as it was (the demo's tokenizer, built there, is the one exception).
    examples = {split: split_examples(cfg, split) for split in ("train", "test")}
    model_cfg, tokenizer = model_and_tokenizer(cfg, wd)
    train_set = datasets.PromptSet(examples["train"], tokenizer, cfg.data.max_prompt_len)
    test_set = datasets.PromptSet(examples["test"], tokenizer, cfg.data.max_prompt_len)
    # Printed before the weights load (parameter count from the abstract state), so a bad
    # checkpoint's error line follows the data counts instead of replacing them.
    settings = learner.StepSettings.from_config(cfg)
    graphdef, abstract = learner.abstract_state(model_cfg, settings, mesh)
    view.write(report.config_summary(cfg, wd, model_cfg, abstract.params, train_set, test_set))
    sampler = datasets.EpochSampler(len(train_set), cfg.data.shuffle_seed)
    seeds = _seeds(cfg)
    # A resume reads neither the HF weights nor builds a fresh state: the checkpoint alone.
    ckpt = _checkpoints(cfg, wd, existing_only=True)
    restored = None if ckpt is None else _restore(ckpt, abstract, sampler, seeds, view)
    if restored is None:
        if multihost.is_leader():  # a fresh run starts fresh per-question evaluation scores
            (wd / EVAL_SCORES).unlink(missing_ok=True)
        fresh = _fresh_state(cfg, model_cfg, mesh, train_set, tokenizer, view)
        restored = (fresh, ResumeState(), -1)
    state, resume, resume_step = restored
    del abstract, restored
    ckpt = ckpt or _checkpoints(cfg, wd, existing_only=False)
    _write_run_files(cfg, wd)
    writer = _metrics_writer(cfg, wd, resume_step=resume_step)
    # Built on the learner's weights: launched SGLang servers start on their one export.
    pad_id, version = tokenizer.pad_token_id, resume.weight_version
    engine = make_engine(cfg, model_cfg, state.params, mesh, pad_id, wd, version)
    if cfg.rollout.overlap and not concurrent_engine(engine):
        view.write(LAGGED_ENGINE_NOTE)
    feed = RolloutFeed(
        cfg, engine, train_set, sampler, tokenizer, faults, pending=resume.pending_rollout
    )
    resume.pending_rollout = None  # the feed's now; each checkpoint asks it (feed.record)
    return Run(
        cfg=cfg,
        workdir=wd,
        log=view.write,
        train_set=train_set,
        tokenizer=tokenizer,
        learner=learner.Learner(settings, graphdef, mesh),
        engine=engine,
        evaluator=evaluation.Evaluator(cfg.eval, test_set, tokenizer, cfg.data.max_response_len),
        ckpt=ckpt,
        sampler=sampler,
        writer=writer,
        seeds=seeds,
        faults=faults,
        state=state,
        resume=resume,
        feed=feed,
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
