"""What `python -m srpo_jax.main` prints when its output goes to a pipe (CI, a log file).

Two tiny demo runs in subprocesses, stdout and stderr piped: one at the default verbosity,
one at --verbosity=1. Expected lines are spelled out here from the flags given, not taken
from the code under test.
"""

import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# 3 warm-up steps, then 5 RL steps of 2 prompts x 2 rollouts; eval every 2 steps, one
# checkpoint at the end (orbax's INFO chatter is what --verbosity=1 must bring back).
TINY = [
    "--config=configs/demo.py",
    "--config.warmup.steps=3",
    "--config.train.num_steps=5",
    "--config.train.prompts_per_step=2",
    "--config.train.mini_batch_prompts=2",
    "--config.algo.group_size=2",
    "--config.data.synthetic_train_size=32",
    "--config.data.synthetic_test_size=4",
    "--config.eval.every_steps=2",
    "--config.eval.num_samples=1",
    "--config.checkpoint.every_steps=0",
    "--log_every=2",
]
ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (\S+\.py):\d+\] (.*)$")


def _run(workdir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", *TINY, f"--workdir={workdir}", *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,  # stdout is a pipe, not a terminal: plain lines, no bar
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    quiet, verbose = tmp_path_factory.mktemp("quiet"), tmp_path_factory.mktemp("verbose")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(_run, quiet)
        b = pool.submit(_run, verbose, "--verbosity=1")
        return {"quiet": (a.result(), quiet), "verbose": (b.result(), verbose)}


@pytest.mark.slow
def test_piped_output_is_one_plain_line_every_n_steps_each_message_once(runs):
    proc, workdir = runs["quiet"]
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\r" not in out  # no bar redraws in a log file
    lines = out.splitlines()
    assert len(lines) == len(set(lines)), "a line was printed twice"
    heads = [ln.split(" | ")[0] for ln in lines]
    assert [h for h in heads if h.startswith("warm-up ")] == ["warm-up 2/3", "warm-up 3/3"]
    assert [h for h in heads if h.startswith("rl ")] == ["rl 2/5", "rl 4/5", "rl 5/5"]
    for head, line in zip(heads, lines, strict=True):
        if head.startswith("rl "):
            assert re.search(r"\| reward \d\.\d{3} \| acc \d\.\d{3} \| ", line), line
            assert re.search(r"\| \d+\.\d\d s/step \| eta \d+:\d\d$", line), line
    evals = [ln.split(":")[0] for ln in lines if ": eval avg@1 = " in ln]
    assert evals == ["step 0", "step 2", "step 4"]
    # Order: config summary, warm-up, RL with its evaluations between lines, run summary.
    first = [
        next(i for i, ln in enumerate(lines) if ln.startswith(start))
        for start in ("── srpo_jax run ", "warm-up 3/3", "step 0: eval", "rl 5/5", "── run summary")
    ]
    assert first == sorted(first)
    assert any(ln.startswith("steps        5 of 5 RL steps") for ln in lines)
    assert f"metrics      {workdir / 'metrics.jsonl'}" in lines
    assert "{" not in out  # the config is summarised, not dumped as JSON
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == 5 and saved["log"]["log_every"] == 2
    # The trainer's messages are not repeated as absl log lines, and library INFO is hidden.
    assert not [ln for ln in proc.stderr.splitlines() if ABSL_INFO.match(ln)], proc.stderr


@pytest.mark.slow
def test_verbosity_1_brings_library_info_back_but_not_a_second_copy(runs):
    proc, _ = runs["verbose"]
    assert proc.returncode == 0, proc.stderr
    info = [ABSL_INFO.match(ln) for ln in proc.stderr.splitlines()]
    files = {m.group(1) for m in info if m}
    assert "checkpoint_manager.py" in files, proc.stderr  # orbax, at the final checkpoint
    assert not files & {"setup.py", "loop.py", "step.py"}  # trainer messages go to stdout only
    lines = proc.stdout.splitlines()
    assert len(lines) == len(set(lines))
    assert [ln.split(" | ")[0] for ln in lines if ln.startswith("rl ")] == [
        "rl 2/5",
        "rl 4/5",
        "rl 5/5",
    ]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--log_every=0", "error: flag --log_every=0: 0 is not a positive integer"),
        ("--config.log.log_every=0", "error: config.log.log_every must be >= 1, got 0"),
    ],
)
def test_bad_log_every_is_one_line_and_exit_2(tmp_path, flag, message):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", "--config=configs/demo.py", flag],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr
