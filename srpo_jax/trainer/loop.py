"""The schedule around the training step: evaluation, checkpoints, time budget and signals.

`train_loop(run, preempt, progress)` runs steps start..num_steps of a set-up `Run`
(trainer/setup.py) with trainer/step.py and decides, after each, whether to evaluate,
checkpoint, stop for the time budget or stop for SIGTERM. The host state a checkpoint
carries besides the train state is a typed `ResumeState`.

Preemption. SIGTERM (from the start of `trainer.run`) sets a flag; the loop finishes the
current step, skips that step's evaluation (it runs first thing after the resume instead),
writes a checkpoint and returns normally, so the process exits 0 within one step's time.

Numerical faults. After optim.max_consecutive_skips steps in a row whose every update had a
non-finite gradient norm, the loop checkpoints the last good state and raises
TrainingAborted naming the step (main prints one line and exits 1).

A full disk. Any write of the run that runs out of space raises disk.DiskFullError (one
line naming the path and the bytes; main exits 1). A checkpoint is written in the
background, so the disk may fill during its write and a metrics line fail first: the loop
then waits for the checkpoint and, if it failed too, reports the checkpoint, the cause.

Whatever stops the loop early (a full disk, an engine error, non-finite steps) first closes
the rollout engine, so that the SGLang servers it launched stop with the run.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time

from absl import logging

from srpo_jax import disk, multihost
from srpo_jax.config import to_dict
from srpo_jax.trainer import evaluation, host_memory, report
from srpo_jax.trainer import metrics as metrics_lib
from srpo_jax.trainer import progress as progress_lib
from srpo_jax.trainer.faults import poison
from srpo_jax.trainer.metrics import EVAL_SCORES
from srpo_jax.trainer.step import learn_and_sync


class TrainingAborted(RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps); the message says why."""


class Preemption:
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


@dataclasses.dataclass
class ResumeState:
    """What a checkpoint holds besides the train state and the data cursor (its JSON keys)."""

    train_elapsed_s: float = 0.0  # training wall-clock so far, evaluation excluded
    weight_version: int = 0  # the rollout engine's weights = params after this many steps
    evals: list = dataclasses.field(default_factory=list)  # [train_elapsed_s, avg@k] pairs
    pending_eval: int = -1  # a step whose evaluation a preemption postponed
    # rollout.overlap: the next step's rollout, generated but not trained on (overlap.Pending)
    pending_rollout: dict | None = None

    @classmethod
    def from_host(cls, host: dict) -> ResumeState:
        return cls(**{f.name: host[f.name] for f in dataclasses.fields(cls) if f.name in host})

    def to_host(self, run, step_done: int) -> dict:
        return dict(
            dataclasses.asdict(self),
            pending_rollout=run.feed.record(),
            sampler=run.sampler.state_dict(),
            seeds=run.seeds,
            config=to_dict(run.cfg),
            step=step_done,
        )


def _save(run, step_done: int) -> None:
    run.ckpt.save(step_done, run.state, run.resume.to_host(run, step_done))


def _evaluate(run, step_done: int) -> None:
    cfg, resume = run.cfg, run.resume
    res = run.evaluator.run(run.engine, step=step_done, seed=cfg.train.seed)
    res["time/train_elapsed_s"] = resume.train_elapsed_s
    run.writer.write(step_done, res)
    if multihost.is_leader():  # per-question scores, for intervals over questions (compare_ci)
        line = json.dumps({"step": step_done, "avg_at_k": run.evaluator.last_scores}) + "\n"
        disk.append_whole(run.workdir / EVAL_SCORES, line.encode())
    resume.evals.append([resume.train_elapsed_s, res["eval/avg_at_k"]])
    run.log(
        f"step {step_done}: eval avg@{cfg.eval.num_samples} = {res['eval/avg_at_k']:.3f}, "
        f"maj@{cfg.eval.num_samples} = {res['eval/maj_at_k']:.3f}"
    )


def _eval_due(cfg, step_done: int) -> bool:
    return bool(cfg.eval.every_steps and step_done % cfg.eval.every_steps == 0)


def _one_step(run, step: int) -> dict:
    """Step `step` (0-based) end to end; returns its metrics line (also written)."""
    n, faults = step + 1, run.faults  # n: the step's number in metrics.jsonl
    t_step = time.perf_counter()
    prepared = run.feed.prepare(step)
    batch = poison(prepared.batch) if n in faults.nan_steps else prepared.batch
    if faults.kill_point == "mid_step" and faults.kill_step == n:
        run.ckpt.wait()  # an async save still in flight would make the restart point vary
        faults.maybe_kill("mid_step", n)
    run.state, m = learn_and_sync(
        run.learner, run.engine, run.state, prepared, batch, n, before_sync=run.feed.wait
    )
    m["time/rollout_wait_s"] = run.feed.wait_s
    run.resume.weight_version = n
    step_s = time.perf_counter() - t_step
    run.resume.train_elapsed_s += step_s
    m["time/step_s"] = step_s
    m["time/train_elapsed_s"] = run.resume.train_elapsed_s
    run.writer.write(n, m)
    return m


def _check_skips(run, n: int, m: dict) -> None:
    limit = run.cfg.optim.max_consecutive_skips
    consecutive = int(m["skipped_updates_consecutive"])  # fetched with the step's metrics
    if consecutive >= limit:
        _save(run, n)
        run.ckpt.wait()
        raise TrainingAborted(
            f"step {n}: {consecutive} consecutive steps had a non-finite gradient norm "
            f"(limit optim.max_consecutive_skips={limit}); the "
            f"last good params are in the checkpoint of step {n} in {run.workdir / 'checkpoints'}"
        )


def _after_step(run, n: int, m: dict, preempt) -> bool:
    """Evaluation, checkpoint and stop decisions after step n; True = stop the loop."""
    cfg, faults = run.cfg, run.faults
    _check_skips(run, n, m)
    if _eval_due(cfg, n):
        if preempt.requested:
            run.resume.pending_eval = n  # bounded exit time: evaluate after the resume
        else:
            _evaluate(run, n)
    budget_s = cfg.train.time_budget_hours * 3600.0
    over_budget = budget_s > 0 and run.resume.train_elapsed_s >= budget_s
    every = cfg.checkpoint.every_steps
    if n == cfg.train.num_steps or over_budget or preempt.requested or (every and n % every == 0):
        _save(run, n)
        if faults.kill_point == "after_checkpoint" and faults.kill_step == n:
            run.ckpt.wait()
            faults.maybe_kill("after_checkpoint", n)
        # Free heap pages glibc keeps go back to the kernel, so RSS follows the memory in
        # use instead of creeping up over a long run (host_memory.py, the soak).
        host_memory.release_free_heap()
    if preempt.requested:
        run.log(f"preempted: checkpoint written at step {n}; exiting")
    elif over_budget:
        run.log(f"time budget of {cfg.train.time_budget_hours} h reached at step {n}")
    return preempt.requested or over_budget


def train_loop(run, preempt: Preemption, progress: progress_lib.Progress) -> dict:
    """Steps from the restored one to config.train.num_steps; returns the run summary.

    progress: the console view; its "rl" phase starts here (evaluations print above it) and
    its `update(step, metrics)` is called once per step."""
    start_step = int(multihost.to_host(run.state.step))
    progress.start("rl", run.cfg.train.num_steps, initial=start_step)
    try:
        try:
            _steps(run, progress, start_step, preempt)
        except disk.DiskFullError:
            run.ckpt.wait()  # a checkpoint that filled the disk is the cause: it raises instead
            raise
    except BaseException:
        _close_on_abort(run)
        raise
    return _finish(run, progress, start_step)


def _close_on_abort(run) -> None:
    """Stops the rollout engine of a run that is ending on an error: servers the engine
    launched run in their own session, so nothing else would stop them once this process
    exits. A failure here is logged, not raised: the error that stopped the run is the one
    main reports."""
    try:
        run.feed.close()
        run.engine.close()
    except Exception as e:  # noqa: BLE001 - must not hide the cause
        logging.warning("closing the rollout engine after the error failed: %s", e)


def _steps(run, progress: progress_lib.Progress, start_step: int, preempt: Preemption) -> None:
    if start_step == 0 and _eval_due(run.cfg, 0):
        _evaluate(run, 0)
    if run.resume.pending_eval == start_step and start_step > 0:
        _evaluate(run, start_step)  # skipped by the preemption that ended the previous run
        run.resume.pending_eval = -1
    for step in range(start_step, run.cfg.train.num_steps):
        m = _one_step(run, step)
        progress.update(step + 1, m)
        if _after_step(run, step + 1, m, preempt):
            break


def _finish(run, progress: progress_lib.Progress, start_step: int) -> dict:
    run.feed.close()
    run.engine.close()
    run.ckpt.wait()
    wd, evals = run.workdir, run.resume.evals
    curves = wd / "curves.png"
    if multihost.is_leader():
        metrics_lib.plot_curves(wd / "metrics.jsonl", curves)
    summary = {
        "final_step": int(multihost.to_host(run.state.step)),
        "evals": evals,
        "metrics": str(wd / "metrics.jsonl"),
        "curves": str(curves),
        "budget_table": evaluation.budget_table(evals, hours=(1.0, 5.0, 10.0)),
        "train_step_variants": run.learner.num_compiled,
    }
    run.writer.close()
    progress.close()  # times the last phase for the summary, whose table prints below the bar
    # From metrics.jsonl, the record of truth: a resumed run's summary covers the whole run.
    records = metrics_lib.read_metrics(wd / metrics_lib.FILENAME) if multihost.is_leader() else []
    run.log(
        report.run_summary(
            run.cfg, wd, records, phase_seconds=progress.phase_seconds, start_step=start_step
        )
    )
    return summary
