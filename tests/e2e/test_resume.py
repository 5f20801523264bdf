"""Exact resume, preemption and numerical-fault handling of `python -m srpo_jax.main`.

Every run is a real subprocess on a tiny demo config (one CPU device, as a user's run).
Faults are injected with the trainer's testing aids (srpo_jax/trainer/setup.py docstring):

- exact resume: a run killed with SIGKILL (a) in the middle of step 4, after step 3's
  metrics line but two steps past the last checkpoint, and (b) right after the checkpoint
  of step 4 is finalised, is restarted with the same command; every later metric, and the
  final params, EMA teacher and optimizer state, must be bit-identical to the
  uninterrupted run's, and metrics.jsonl holds one training line per step (the re-run of a
  step replaced the line the killed run wrote).
- preemption: SIGTERM after the first step's metrics line -> the step finishes, a
  checkpoint of that step is written, exit code 0, within a bounded time.
- numerical faults: injected non-finite gradients skip steps; max_consecutive_skips in a row
  stop the run with exit code 1 and one line naming the step (no traceback).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from srpo_jax.trainer.metrics import read_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = [
    "--config=configs/demo.py",
    "--config.data.synthetic_train_size=64",
    "--config.data.synthetic_test_size=8",
    "--config.data.max_response_len=16",
    "--config.algo.group_size=4",
    "--config.train.prompts_per_step=2",
    "--config.train.mini_batch_prompts=2",
    "--config.eval.num_samples=2",
    "--config.eval.max_examples=4",
    "--config.checkpoint.keep=10",
    "--config.optim.lr=5e-4",
    "--config.optim.warmup_steps=2",
]
# A short warm-up: the synthetic task's answers are well-formed only after some 200 warm-up
# steps, which every killed run would repeat; so rollouts here earn no reward and the
# routed (teacher) path is left to test_trainer's and test_multihost_trainer's resumed
# runs, which warm up for 300 steps. Exactness here covers params, EMA, optimizer, data.
RESUME = TINY + [
    "--config.train.num_steps=5",
    "--config.warmup.steps=40",
    "--config.warmup.lr=3e-3",
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=2",
]
# Metrics that measure time or this process's compiles, not the training itself.
VOLATILE = ("time/", "sync/seconds", "compile/")


def start(workdir, args, **env_extra) -> subprocess.Popen:
    """Starts a run; its output goes to files beside the workdir (no pipe to fill up)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    env.update(env_extra)
    workdir = pathlib.Path(workdir)
    logs = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "srpo_jax.main", f"--workdir={workdir}", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=open(f"{logs}.out", "w"),  # noqa: SIM115 - closed by the child's exit
        stderr=open(f"{logs}.err", "w"),  # noqa: SIM115
        text=True,
    )
    proc.logs = logs
    return proc


def finish(proc: subprocess.Popen, timeout=1800) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = pathlib.Path(f"{proc.logs}.out").read_text()
    return proc.returncode, out, pathlib.Path(f"{proc.logs}.err").read_text()


def stable(records):
    return [
        {k: v for k, v in r.items() if not any(k.startswith(p) for p in VOLATILE)} for r in records
    ]


def final_state(workdir: pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """A checkpoint's arrays (default: the latest) as {leaf path: numpy array}, read with
    orbax alone."""
    mgr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "host"))
    step = mgr.latest_step() if step is None else step
    tree = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    mgr.close()
    return step, flat


def assert_same_run(full: pathlib.Path, again: pathlib.Path, last_step: int) -> None:
    """`again` logged the same metric lines as `full` in the same order, bit for bit but for
    VOLATILE (JSON keeps every float exactly), and its latest checkpoint, at `last_step`,
    holds the same arrays (teacher and optimizer state among them) bit for bit."""
    want = stable(read_metrics(full / "metrics.jsonl"))
    got = stable(read_metrics(again / "metrics.jsonl"))
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(want, got, strict=True):
        assert a == b, f"step {a['step']} differs"
    step_full, state_full = final_state(full)
    step_again, state_again = final_state(again)
    assert step_full == step_again == last_step
    assert state_full.keys() == state_again.keys()
    assert any("teacher" in k for k in state_full) and any("opt_state" in k for k in state_full)
    for key, value in state_full.items():
        np.testing.assert_array_equal(state_again[key], value, err_msg=key, strict=True)


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    dirs = {name: root / name for name in ("full", "mid_step", "after_checkpoint")}
    # The uninterrupted run first, alone: it fills the session's compilation cache
    # (tests/conftest.py), so the killed runs and their restarts load its programs instead
    # of three processes compiling the same ones at once on two cores.
    results = {"full": finish(start(dirs["full"], RESUME))}
    killed = {
        "mid_step": start(dirs["mid_step"], RESUME, SRPO_DEBUG_KILL="mid_step:4"),
        "after_checkpoint": start(
            dirs["after_checkpoint"], RESUME, SRPO_DEBUG_KILL="after_checkpoint:4"
        ),
    }
    results.update({name: finish(p) for name, p in killed.items()})
    # Where each killed run had got to (its log is rewritten by the restart below).
    last_steps = {
        name: max(r["step"] for r in read_metrics(dirs[name] / "metrics.jsonl") if "loss" in r)
        for name in ("mid_step", "after_checkpoint")
    }
    checkpoints = {name: final_state(dirs[name])[0] for name in last_steps}
    # Restart the killed runs with exactly the same command line (no fault this time).
    second = {name: start(dirs[name], RESUME) for name in ("mid_step", "after_checkpoint")}
    restarted = {name: finish(p) for name, p in second.items()}
    return dirs, results, restarted, last_steps, checkpoints


@pytest.mark.slow
def test_killed_runs_die_where_asked(resume_runs):
    _, results, _, last_steps, checkpoints = resume_runs
    assert results["full"][0] == 0, results["full"][2][-3000:]
    for name in ("mid_step", "after_checkpoint"):
        rc, out, err = results[name]
        assert rc == -signal.SIGKILL, (rc, err[-3000:])
    # mid_step:4 dies after step 3's line, two steps past checkpoint 2;
    # after_checkpoint:4 dies with step 4's line and checkpoint written.
    assert last_steps == {"mid_step": 3, "after_checkpoint": 4}
    assert checkpoints == {"mid_step": 2, "after_checkpoint": 4}


@pytest.mark.slow
@pytest.mark.parametrize("name,resumed_from", [("mid_step", 2), ("after_checkpoint", 4)])
def test_restart_continues_exactly_as_the_uninterrupted_run(resume_runs, name, resumed_from):
    dirs, _, restarted, _, _ = resume_runs
    rc, out, err = restarted[name]
    assert rc == 0, err[-3000:]
    assert f"resumed from checkpoint step {resumed_from}" in out
    # One line per step: the killed run's lines after the checkpoint (a torn one included)
    # were replaced by the re-run's, not kept beside them; every line parses.
    lines = (dirs[name] / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    evals = [r["step"] for r in records if "eval/avg_at_k" in r]
    assert evals == [0, 2, 4], evals
    # Same lines in the same order (lines after the checkpoint were dropped, then redone).
    assert_same_run(dirs["full"], dirs[name], 5)


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_0(tmp_path):
    args = TINY + ["--config.train.num_steps=100", "--config.eval.every_steps=0"]
    args += ["--config.checkpoint.every_steps=0", "--config.warmup.steps=0"]
    proc = start(tmp_path, args)
    deadline = time.monotonic() + 600
    while not any("loss" in r for r in read_metrics(tmp_path / "metrics.jsonl")):
        assert proc.poll() is None, pathlib.Path(f"{proc.logs}.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no step finished in 600 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rc, out, err = finish(proc, timeout=300)
    waited = time.monotonic() - sent
    assert rc == 0, err[-3000:]
    # Bounded: the step in flight, one checkpoint; never the 100-step run (steps are ~1 s).
    assert waited < 120, waited
    last = max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r)
    assert last < 100 and "preempted: checkpoint written at step" in out
    assert final_state(tmp_path)[0] == last


@pytest.mark.slow
def test_consecutive_non_finite_steps_stop_the_run_with_one_line(tmp_path):
    args = TINY + ["--config.train.num_steps=10", "--config.eval.every_steps=0"]
    args += ["--config.warmup.steps=0", "--config.optim.max_consecutive_skips=2"]
    # Step 1 alone is skipped and the run goes on; steps 3 and 4 in a row stop it.
    rc, out, err = finish(start(tmp_path, args, SRPO_DEBUG_NAN_STEPS="1,3,4"))
    assert rc == 1, err[-3000:]
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: step 4: 2 consecutive steps"), err
    steps = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r}
    assert sorted(steps) == [1, 2, 3, 4]
    assert [steps[s]["skipped_updates"] for s in (1, 2, 3, 4)] == [1, 0, 1, 1]
    assert steps[4]["skipped_updates_total"] == 3
    assert final_state(tmp_path)[0] == 4  # the last good state is saved before stopping
