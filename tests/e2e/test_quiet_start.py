"""A quiet start: `python -m srpo_jax.main` as a user runs it, JAX_PLATFORMS unset.

This environment has the [aot] extra (jax-cuda12-plugin and libtpu, for compile-only
targets) and, on a CPU machine, no GPU driver: left to itself JAX would start both plugins
and log a CUDA-plugin traceback and libtpu's complaints about the missing TPU. The patterns
below are those lines as jax 0.10.2 and libtpu 0.0.42 write them on such a host.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAVY_LIBRARIES = {"jax", "jaxlib", "optax", "orbax", "flax", "transformers"}
PLUGIN_NOISE = re.compile(
    r"Traceback|Jax plugin configuration error|Unable to load CUDA|cudart_stub|"
    r"absl::InitializeLog|InitGoogle|libtpu|TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|"
    r"Unable to initialize backend|Failed to find host bounds"
)
# Two RL steps of 2 prompts x 2 rollouts, no warm-up, no evaluation, no periodic checkpoint.
TINY_DEMO = [
    "--config=configs/demo.py",
    "--config.warmup.steps=0",
    "--config.train.num_steps=2",
    "--config.train.prompts_per_step=2",
    "--config.train.mini_batch_prompts=2",
    "--config.algo.group_size=2",
    "--config.data.synthetic_train_size=32",
    "--config.data.synthetic_test_size=4",
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=0",
]


def _user_env() -> dict[str, str]:
    """The test session's environment minus what it pins for itself: a user's shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if PLUGIN_NOISE.search(line)]


def test_print_config_loads_no_jax_and_prints_nothing_on_stderr():
    # main run as `-m` would run it, then the loaded top-level modules on stdout's last line.
    script = (
        "import json, runpy, sys\n"
        "sys.argv = ['srpo_jax.main', '--config=configs/demo.py', '--print_config']\n"
        "try:\n"
        "    runpy.run_module('srpo_jax.main', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    *config_lines, modules_line = proc.stdout.splitlines()
    assert json.loads("\n".join(config_lines))["algo"]["method"] == "srpo"
    loaded = set(json.loads(modules_line))
    assert "srpo_jax" in loaded
    assert loaded.isdisjoint(HEAVY_LIBRARIES), sorted(loaded & HEAVY_LIBRARIES)


@pytest.mark.slow
def test_demo_run_prints_no_traceback_and_no_plugin_lines(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", *TINY_DEMO, f"--workdir={tmp_path}"],
        cwd=REPO_ROOT,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rl 2/2" in proc.stdout and "── run summary" in proc.stdout, proc.stdout
    assert _noise(proc.stderr) == [], proc.stderr
