"""The command line as a user meets it: run `python -m srpo_jax.main` in a subprocess."""

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_main(*args: str) -> subprocess.CompletedProcess:
    # One CPU device: the mesh check must see the count a plain run would.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


ERROR_CASES = [
    (
        ["--config=configs/demo.py", "--config.optim.lrr=1e-5"],
        ["unknown config key config.optim.lrr", "did you mean config.optim.lr"],
    ),
    (
        ["--config=configs/demo.py", "--config.optim.lr=-1"],
        ["config.optim.lr must be > 0, got -1.0"],
    ),
    (["--config=configs/demo.py", "--config.optim.lr=abc"], ["--config.optim.lr=abc"]),
    (
        ["--config=configs/qwen3_8b_chem.py:method=grpoo"],
        ["config.algo.method", "'grpoo'"],
    ),
    (
        ["--config=configs/qwen3_8b_chem.py:method=srpo"],
        ["config.model.hf_path is empty for preset 'qwen3_8b'"],
    ),
    (["--config=configs/no_such_file.py"], ["no_such_file.py"]),
    # Valid schema, but an 8-device mesh on this 1-device run: checked after start-up.
    (
        ["--config=configs/qwen3_8b_chem.py", "--config.model.hf_path=/models/q"],
        ["config.mesh data*fsdp*tensor = 1*1*8 = 8 must equal the number of devices (1)"],
    ),
]


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """All error cases at once: each is a separate interpreter start (seconds each)."""
    workdirs = [tmp_path_factory.mktemp(f"case{i}") for i in range(len(ERROR_CASES))]
    with concurrent.futures.ThreadPoolExecutor(len(ERROR_CASES)) as pool:
        futures = [
            pool.submit(run_main, *args, f"--workdir={w}")
            for (args, _), w in zip(ERROR_CASES, workdirs, strict=True)
        ]
        return [(f.result(), w) for f, w in zip(futures, workdirs, strict=True)]


@pytest.mark.parametrize("case", range(len(ERROR_CASES)))
def test_config_errors_exit_2_with_one_clear_line(error_runs, case):
    fragments = ERROR_CASES[case][1]
    proc, tmp_path = error_runs[case]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_print_config_shows_resolved_values():
    proc = run_main(
        "--config=configs/qwen3_8b_chem.py:method=grpo",
        "--config.model.random_init=True",
        "--config.train.num_steps=7",
        "--print_config",
    )
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert resolved["optim"]["lr"] == 1e-6 and resolved["train"]["mini_batch_prompts"] == 8
    assert resolved["train"]["num_steps"] == 7 and resolved["algo"]["method"] == "grpo"
