"""The console scripts that pyproject.toml installs run the same programs as `python -m`."""

import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "command,module,args",
    [
        ("srpo-train", "srpo_jax.main", ["--config=configs/demo.py", "--print_config"]),
        ("srpo-plan", "srpo_jax.plan", ["--list"]),
    ],
)
def test_command_prints_what_python_m_prints(command, module, args):
    script = _run([str(BIN / command), *args])
    module_run = _run([sys.executable, "-m", module, *args])
    assert script.returncode == 0, script.stderr
    assert module_run.returncode == 0, module_run.stderr
    assert script.stdout == module_run.stdout and script.stdout


@pytest.mark.parametrize("command", ["srpo-compare", "srpo-device-check", "srpo-fetch"])
def test_command_is_installed_and_parses_its_flags(command):
    proc = _run([str(BIN / command), "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--out" in proc.stdout


@pytest.mark.parametrize(
    "command,module,args",
    [
        ("srpo-export", "srpo_jax.export", ["--workdir={tmp}", "--out={tmp}/hf"]),
        ("srpo-evaluate", "srpo_jax.evaluate", ["--out={tmp}/eval"]),
    ],
)
def test_command_answers_bad_input_as_python_m_does(command, module, args, tmp_path):
    # A folder that is no run, and no model to evaluate: each exits 2 before loading JAX.
    args = [a.format(tmp=tmp_path) for a in args]
    script = _run([str(BIN / command), *args])
    module_run = _run([sys.executable, "-m", module, *args])
    assert script.returncode == module_run.returncode == 2, script.stderr
    assert script.stderr == module_run.stderr and script.stderr.startswith("error: ")
    assert len(script.stderr.splitlines()) == 1
