"""rollout.overlap=1 (one step off-policy) over the embedded engine, end to end.

Real subprocess runs of `python -m srpo_jax.main` on the tiny demo config of test_resume.py
(no warm-up: rewards are 0, the schedule is what is tested):

- the lag: `rollout/weight_version_lag` is 0 at step 1 and 1 after it;
- the rollout of step n+1, which the checkpoint of step n carries, is bit-identical to a
  rollout a fresh engine generates from the params after n-1 steps (the saved checkpoint,
  or the initial weights for n = 1) with step n+1's prompts (the sampler's order) and
  seeds; step n+1's metrics line describes that same rollout;
- exact resume: a run killed with SIGKILL mid-step 4 (its rollout of step 5 submitted) and
  restarted equals the uninterrupted overlapped run (params, EMA teacher, optimizer state
  bit-exact, every metric but the timings equal);
- a bf16 run: the engine's lagged weights are its own copy, not the donated params; the same
  run with the engine generating in the worker thread (SGLang's path) beside the train step
  trains on the same rollouts (metrics and params equal);
- overlap=0 is the on-policy loop unchanged: a run equals prepare_step + learn_and_sync
  called by hand (the functions of the loop before the option existed).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.test_resume import TINY, final_state, finish, stable, start

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

OVERLAP = TINY + [
    "--config.train.num_steps=5",
    "--config.warmup.steps=0",
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=1",
    "--config.rollout.overlap=1",
]

# Regenerates the pending rollout of each checkpoint of the run in argv[1] from the params
# it must have been sampled from; prints one JSON line of findings.
REFERENCE = r"""
import json, pathlib, sys
import ml_collections
import numpy as np
from srpo_jax import config as config_lib
from srpo_jax.data import datasets
from srpo_jax.learner import train_step as learner
from srpo_jax.rollout.config import engine_weights_dtype
from srpo_jax.rollout.jax_engine import JaxEngine
from srpo_jax.sharding import make_mesh
from srpo_jax.trainer import checkpoint
from srpo_jax.trainer import setup as trainer
from srpo_jax.trainer.overlap import Pending
from srpo_jax.trainer.step import sampling_params

wd = pathlib.Path(sys.argv[1])
cd = ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))
cfg = config_lib.from_config_dict(cd)
model_cfg, tok = trainer.model_and_tokenizer(cfg, wd)
train_set = datasets.PromptSet(trainer.split_examples(cfg, "train"), tok, cfg.data.max_prompt_len)
mesh = make_mesh(cfg.mesh)
_, abstract = learner.abstract_state(model_cfg, learner.StepSettings.from_config(cfg), mesh)
ckpt = checkpoint.CheckpointManager(wd / "checkpoints", keep=10)
order = datasets.EpochSampler(len(train_set), cfg.data.shuffle_seed)
draws = [order.next_indices(cfg.train.prompts_per_step) for _ in range(cfg.train.num_steps)]
found = []
for n in range(1, cfg.train.num_steps):
    pend = Pending.from_record(ckpt.read_host_state(n)["pending_rollout"])
    if n == 1:
        params = trainer.initial_params(cfg, model_cfg, mesh)[1]
    else:
        params = ckpt.restore(abstract, step=n - 1, only=("params",)).state.params
    engine = JaxEngine(
        model_cfg, params, mesh=mesh, pad_id=tok.pad_token_id,
        length_buckets_per_octave=cfg.data.length_buckets_per_octave,
        weights_dtype=engine_weights_dtype(cfg.rollout, model_cfg.dtype), version=n - 1,
    )
    ro = engine.generate(
        [train_set.prompt_ids[i] for i in pend.indices], cfg.algo.group_size,
        sampling_params(cfg, tok), step=n,
    )
    found.append({
        "step": pend.step + 1,
        "indices_in_order": list(pend.indices) == [int(i) for i in draws[n]],
        "equal": all(
            np.array_equal(getattr(ro, k), getattr(pend.rollouts, k))
            and getattr(ro, k).dtype == getattr(pend.rollouts, k).dtype
            for k in ("token_ids_BR", "logprobs_BR", "lengths_B", "prompt_index_B")
        ) and ro.finish_reasons == pend.rollouts.finish_reasons,
        "weight_version": pend.rollouts.weight_version,
        "len_mean": float(pend.rollouts.lengths_B.astype(np.float64).mean()),
    })
print("FOUND " + json.dumps(found))
"""


def _run_python(code: str, *args) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _train_lines(workdir):
    return [r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def overlap_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    full, killed = root / "full", root / "killed"
    results = {"full": finish(start(full, OVERLAP))}  # fills the compilation cache first
    results["killed"] = finish(start(killed, OVERLAP, SRPO_DEBUG_KILL="mid_step:4"))
    results["restarted"] = finish(start(killed, OVERLAP))
    return full, killed, results


@pytest.mark.slow
def test_the_lag_is_0_at_the_first_step_then_1(overlap_runs):
    full, _, results = overlap_runs
    rc, out, err = results["full"]
    assert rc == 0, err[-3000:]
    assert out.count("rollout.overlap=1 with the embedded jax engine") == 1
    lines = _train_lines(full)
    assert [r["rollout/weight_version_lag"] for r in lines] == [0.0, 1.0, 1.0, 1.0, 1.0]
    for r in lines:
        assert r["time/rollout_s"] > 0 and r["time/rollout_wait_s"] >= 0


@pytest.mark.slow
def test_each_rollout_is_the_one_the_params_two_steps_back_generate(overlap_runs):
    full, _, _ = overlap_runs
    found = json.loads(_run_python(REFERENCE, full).split("FOUND ", 1)[1].splitlines()[0])
    lines = {r["step"]: r for r in _train_lines(full)}
    assert [f["step"] for f in found] == [2, 3, 4, 5]
    for f in found:
        assert f["equal"] and f["indices_in_order"], f
        assert f["weight_version"] == f["step"] - 2
        # The step trained on exactly that rollout.
        assert lines[f["step"]]["rollout/response_len_mean"] == f["len_mean"]
    # The last checkpoint holds none: no step follows it.
    assert "pending_rollout: null" in _pending_of_last(full)


def _pending_of_last(workdir) -> str:
    host = json.loads((workdir / "checkpoints" / "5" / "host" / "metadata").read_text())
    return f"pending_rollout: {json.dumps(host['pending_rollout'])}"


@pytest.mark.slow
def test_a_run_killed_mid_overlap_resumes_exactly(overlap_runs):
    full, killed, results = overlap_runs
    assert results["killed"][0] == -signal.SIGKILL, results["killed"][2][-3000:]
    rc, out, err = results["restarted"]
    assert rc == 0, err[-3000:]
    assert "resumed from checkpoint step 3" in out
    a, b = (
        stable(read_metrics(full / "metrics.jsonl")),
        stable(read_metrics(killed / "metrics.jsonl")),
    )
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x == y, f"step {x['step']} differs"
    (s1, state1), (s2, state2) = final_state(full), final_state(killed)
    assert s1 == s2 == 5 and state1.keys() == state2.keys()
    for key, value in state1.items():
        np.testing.assert_array_equal(state2[key], value, err_msg=key, strict=True)


# overlap=0 through the loop vs by hand, and a bf16 overlapped run, in one interpreter.
BY_HAND = r"""
import json, pathlib, sys
import jax
import numpy as np
from srpo_jax import config as config_lib
from srpo_jax.trainer import checkpoint, progress
from srpo_jax.trainer import setup as trainer
from srpo_jax.trainer.faults import FaultInjection
from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.test_resume import TINY, final_state, finish, stable, start
from srpo_jax.trainer.loop import Preemption, train_loop
from srpo_jax.trainer.overlap import RolloutFeed
from srpo_jax.trainer.step import learn_and_sync, prepare_step

repo, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
demo = config_lib.load_config_module(str(repo / "configs" / "demo.py"), "demo.py")

def cfg_for(**over):
    cd = demo.get_config()
    with cd.unlocked():
        cd.data.synthetic_train_size, cd.data.synthetic_test_size = 64, 8
        cd.algo.group_size, cd.train.prompts_per_step, cd.train.mini_batch_prompts = 4, 2, 2
        cd.train.num_steps, cd.warmup.steps, cd.eval.every_steps = 3, 0, 0
        cd.checkpoint.every_steps = 3
        for k, v in over.items():
            sec, key = k.split("__")
            cd[sec][key] = v
    return config_lib.from_config_dict(cd)

quiet = lambda: progress.Progress(bar=False, enabled=False)
trainer.run(cfg_for(), out / "loop", progress=quiet())
run = trainer.setup(cfg_for(), out / "hand", FaultInjection(), quiet())
lines = []
for step in range(3):
    prep = prepare_step(run.cfg, step, run.engine, run.train_set, run.sampler, run.tokenizer)
    run.state, m = learn_and_sync(run.learner, run.engine, run.state, prep, prep.batch, step + 1)
    lines.append({k: v for k, v in m.items() if not k.startswith(("time/", "sync/seconds"))})
loop = read_metrics(out / "loop" / "metrics.jsonl")
loop = [{k: v for k, v in r.items() if k in lines[0]} for r in loop if "loss" in r]
saved = checkpoint.CheckpointManager(out / "loop" / "checkpoints", keep=3)
ckpt = saved.restore(run.state, step=3).state
same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ckpt, run.state))
bf16 = cfg_for(model__dtype="bfloat16", rollout__overlap=1)
done = trainer.run(bf16, out / "bf16", progress=quiet())["final_step"]
bf16_lines = [r for r in read_metrics(out / "bf16" / "metrics.jsonl") if "loss" in r]
lags = [r["rollout/weight_version_lag"] for r in bf16_lines]
got = {"metrics_equal": loop == lines, "state_equal": all(same)}
# The worker-thread path (SGLang's) with the embedded engine as the pool: it generates while
# the train step runs, from its own copy of the weights; it must train on the same rollouts.
run = trainer.setup(bf16, out / "thread", FaultInjection(), quiet())
run.engine.runs_beside_learner = True
run.feed = RolloutFeed(bf16, run.engine, run.train_set, run.sampler, run.tokenizer, run.faults)
train_loop(run, Preemption(), quiet())
volatile = ("time/", "sync/seconds", "compile/")
def stable(wd):
    lines = [r for r in read_metrics(wd / "metrics.jsonl") if "loss" in r]
    return [{k: v for k, v in r.items() if not k.startswith(volatile)} for r in lines]
threaded = stable(out / "thread") == stable(out / "bf16")
final = [checkpoint.CheckpointManager(out / d / "checkpoints", keep=3).restore(run.state).state
         for d in ("bf16", "thread")]
threaded &= all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *final)))
print("RESULT " + json.dumps(dict(got, bf16_lags=lags, bf16_steps=done, threaded=threaded)))
"""


@pytest.mark.slow
def test_overlap_0_is_the_on_policy_loop_and_bf16_overlap_runs_lazy_or_threaded(tmp_path):
    got = json.loads(
        _run_python(BY_HAND, REPO_ROOT, tmp_path).split("RESULT ", 1)[1].splitlines()[0]
    )
    assert got == {
        "metrics_equal": True,
        "state_equal": True,
        "bf16_lags": [0.0, 1.0, 1.0],
        "bf16_steps": 3,
        "threaded": True,
    }
