"""End to end: a few training steps of every method on a shrunken demo config.

One subprocess (a plain single-device JAX, as a user's run has) runs the driver below: 2
steps of each method from the session's warm checkpoint (the demo model after its
supervised warm-up: tests/e2e/conftest.py), then the srpo run resumed for one more step.
Sharing the interpreter keeps the file to a couple of minutes of CPU. The test then reads
what the runs wrote: metrics.jsonl with the keys the issue asks for, a checkpoint,
curves.png, and a resumed log that continues at the next step. Rollout retries are
exercised twice: end to end (the grpo run's first step has two injected engine failures)
and on a fake engine (no JAX).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax.rollout.engine import RolloutError, Rollouts, SamplingParams
from srpo_jax.trainer import faults
from srpo_jax.trainer import setup as trainer
from srpo_jax.trainer.metrics import read_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
METHODS = ("grpo", "sdpo", "srpo", "srpo_no_dw", "advantage_mix")

DRIVER = r"""
import json, os, pathlib, sys
from srpo_jax import config as config_lib
from srpo_jax.trainer import setup as trainer

import jax

repo, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# The methods share the rollout programs (same model, shapes and sampling): a persistent
# cache compiles them once for all five runs.
jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
demo = config_lib.load_config_module(str(repo / "configs" / "demo.py"), "demo.py")

def cfg_for(method, **over):
    cd = demo.get_config(f"method={method}")
    with cd.unlocked():
        cd.data.synthetic_train_size, cd.data.synthetic_test_size = 64, 8
        cd.data.max_response_len = 16
        cd.algo.group_size = 4
        cd.train.prompts_per_step = 4
        # grpo: 2 updates per step (pi_old pre-pass); the others one mini-batch.
        cd.train.mini_batch_prompts = 2 if method == "grpo" else 4
        cd.train.num_steps = 2
        cd.warmup.steps = 0
        # Evaluation (a compile of its own) in the srpo run only.
        cd.eval.every_steps = 2 if method == "srpo" else 0
        cd.eval.num_samples, cd.eval.max_examples = 2, 4
        cd.checkpoint.every_steps = 1
        for key, value in over.items():
            node = cd
            *parents, last = key.split("__")
            for p in parents:
                node = node[p]
            node[last] = value
    return config_lib.from_config_dict(cd)

# Every method starts from the session's warm checkpoint (tests/e2e/conftest.py), whose
# well-formed answers give the routed-rollouts test a correct sibling.
warm = sys.argv[4]
started = dict(model__hf_path=warm, model__preset="", tokenizer__path=warm)

summaries = {}
for method in sys.argv[3].split(","):
    if method == "grpo":  # two engine failures in step 1, then success (max_retries=2)
        os.environ["SRPO_DEBUG_ROLLOUT_FAILS"] = "1:2"
    summaries[method] = trainer.run(cfg_for(method, **started), out / method)
    os.environ.pop("SRPO_DEBUG_ROLLOUT_FAILS", None)
# Resume the srpo run for one more step from its step-2 checkpoint.
resumed = cfg_for("srpo", train__num_steps=3, **started)
summaries["srpo_resumed"] = trainer.run(resumed, out / "srpo")
print("SUMMARIES " + json.dumps(summaries, default=str))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, warm_demo):
    out = tmp_path_factory.mktemp("trainer_runs")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(REPO_ROOT), str(out), ",".join(METHODS), str(warm_demo)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARIES "))
    return out, json.loads(line[len("SUMMARIES ") :]), proc


# Keys every training record carries, whatever the method (the list).
ALWAYS = (
    "reward/mean",
    "reward/accuracy",
    "route/sdpo_frac",
    "route/grpo_frac",
    "route/teacher_frac",
    "route/fail_no_teacher_frac",
    "rollout/response_len_mean",
    "grad_norm",
    "skipped_updates",
    "skipped_updates_total",
    "logp_gap/mean",
    "time/rollout_s",
    "time/reward_s",
    "time/teacher_s",
    "time/learner_s",
    "time/sync_s",
    "time/step_s",
    "compile/train_step_variants",
)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_metrics_checkpoint_and_curves(runs, method):
    out, summaries, _ = runs
    wd = out / method
    records = read_metrics(wd / "metrics.jsonl")
    train = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/avg_at_k" in r]
    steps = [r["step"] for r in train]
    assert steps[:2] == [1, 2], steps
    if method == "srpo":
        assert [r["step"] for r in evals] == [0, 2]  # the resumed step 3 is no eval step
    for r in train:
        missing = [k for k in ALWAYS if k not in r]
        assert not missing, f"{method} step {r['step']} lacks {missing}"
        assert all(np.isfinite(r[k]) for k in ALWAYS), r
        assert r["skipped_updates"] == 0 and r["grad_norm"] > 0
        assert "grpo/clip_high_frac" in r and "grpo/clip_low_frac" in r, sorted(r)
        # Route fractions are fractions of the rollouts and add up per method.
        assert 0 <= r["route/fail_no_teacher_frac"] <= 1 - r["reward/accuracy"] + 1e-9
        if method == "grpo":
            assert r["route/sdpo_frac"] == 0 and r["route/teacher_frac"] == 0
        # Bounded compiles: teacher rows per micro-batch are 0, b/4, b/2 or b.
        assert r["compile/train_step_variants"] <= 4
    routed = [r for r in train if r["route/sdpo_frac"] > 0]
    if method in ("sdpo", "srpo", "srpo_no_dw"):
        for r in routed:  # teacher entropy mean and the entropy-weight spread
            assert r["teacher/entropy_mean"] > 0 and r["sdpo/weight_spread"] >= 0, r
            if method != "srpo":  # no entropy weights: w_t = 1 exactly
                assert r["sdpo/weight_spread"] == 0
    assert (wd / "curves.png").stat().st_size > 0
    assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    final = 3 if method == "srpo" else 2
    assert summaries[method if method != "srpo" else "srpo_resumed"]["final_step"] == final


@pytest.mark.slow
def test_the_warm_start_gives_routed_rollouts(runs):
    """At least one SDPO-style run routed something, so the teacher path really ran."""
    out, _, _ = runs
    routed = [
        r["route/sdpo_frac"]
        for m in ("sdpo", "srpo", "srpo_no_dw")
        for r in read_metrics(out / m / "metrics.jsonl")
        if "route/sdpo_frac" in r
    ]
    assert max(routed) > 0, routed


@pytest.mark.slow
def test_resume_continues_at_the_next_step(runs):
    out, summaries, proc = runs
    assert "resumed from checkpoint step 2" in proc.stdout
    steps = [r["step"] for r in read_metrics(out / "srpo" / "metrics.jsonl") if "reward/mean" in r]
    assert steps == [1, 2, 3]
    assert summaries["srpo_resumed"]["final_step"] == 3


@pytest.mark.slow
def test_injected_rollout_failures_are_retried(runs):
    _, _, proc = runs
    assert proc.stderr.count("rollout attempt") == 2, proc.stderr[-3000:]
    assert (
        "injected rollout failure 2" in proc.stderr
        and "injected rollout failure 3" not in proc.stderr
    )


# ----------------------------------------------------------------------------- fake engine


class _Engine:
    """Returns whole batches, a partial one, or raises, per a script of outcomes."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def generate(self, prompts, n, sp, *, step=0):
        self.calls += 1
        what = self.script.pop(0)
        if what == "raise":
            raise ConnectionError("server went away")
        rows = len(prompts) * n - (1 if what == "partial" else 0)
        return Rollouts(
            token_ids_BR=np.ones((rows, 2), np.int32),
            logprobs_BR=np.zeros((rows, 2), np.float32),
            lengths_B=np.full(rows, 2, np.int32),
            finish_reasons=("stop",) * rows,
            weight_version=0,
            prompt_index_B=np.repeat(np.arange(len(prompts), dtype=np.int32), n)[:rows],
        )


SP = SamplingParams(max_new_tokens=4)


def test_generate_whole_retries_until_a_whole_batch():
    engine = _Engine(["raise", "partial", "ok"])
    ro = trainer.generate_whole(engine, [[1], [2]], 3, SP, step=4, max_retries=2)
    assert ro.num_rows == 6 and engine.calls == 3


def test_generate_whole_gives_up_with_the_step_and_cause():
    engine = _Engine(["raise", "partial", "raise"])
    with pytest.raises(RolloutError, match=r"step 5: rollout failed 3 times .*ConnectionError"):
        trainer.generate_whole(engine, [[1], [2]], 3, SP, step=4, max_retries=2)


def test_fault_injection_parses_and_rejects_bad_values():
    f = faults.FaultInjection.from_env(
        {"SRPO_DEBUG_KILL": "mid_step:3", "SRPO_DEBUG_NAN_STEPS": "2,4"}
    )
    assert (f.kill_point, f.kill_step, f.nan_steps) == ("mid_step", 3, frozenset({2, 4}))
    assert faults.FaultInjection.from_env({}) == faults.FaultInjection()
    with pytest.raises(ValueError, match="SRPO_DEBUG_KILL"):
        faults.FaultInjection.from_env({"SRPO_DEBUG_KILL": "sometime:3"})
