"""The trainer on a real SGLang-family server (sglang-jax on CPU) that is killed mid-batch.

`python -m srpo_jax.main` runs two training steps with rollout.engine=sglang: it exports
the learner's weights, launches the server itself and relaunches it after each step
(sync=restart: sglang-jax has no update route). SRPO_DEBUG_KILL_SERVER=2 SIGKILLs the
server's process group during step 2's generation, once the first of its one-row requests
has been answered. The run must survive it: the half-made batch is thrown away, the
trainer's retry relaunches the server on the step-1 weights, the step trains on a whole
batch and the run ends with exit code 0. The same again as two learner processes (one CPU
device each, mesh fsdp=2): process 0 alone talks to the server and broadcasts the rollouts,
its failure reaches process 1 so both retry together, and both finish. The two processes
again with rollout.overlap=1: step 2's rollout is generated in process 0's worker thread
during step 1 (so the server dies there and is relaunched on the step-0 weights it was
serving), the retry happens in that thread, and process 1 receives only the whole batch, at
the wait after step 1's train step. Set SRPO_SKIP_SGLANG_SERVER=1 to skip these.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from sglang_env import launch_template, write_run_config, write_tiny_checkpoint

from srpo_jax.data.tokenizer import build_tiny_tokenizer
from srpo_jax.rollout import sglang_server
from srpo_jax.trainer.metrics import read_metrics

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPTS, GROUP = 2, 4

# The run's own settings on top of sglang_env.RUN_SETTINGS: the rollouts go to a server the
# run launches and relaunches (sync=restart), with one retry of the step and one restart.
SETTINGS = {
    "algo.group_size": GROUP,
    "train.prompts_per_step": PROMPTS,
    "train.mini_batch_prompts": PROMPTS,
    "rollout.engine": "sglang",
    "rollout.max_retries": 1,
    "rollout.sglang.sync": "restart",
    "rollout.sglang.max_retries": 1,
    # One row per request, one request at a time: the kill lands with the batch half done.
    "rollout.sglang.rows_per_request": 1,
    "rollout.sglang.max_concurrency": 1,
    "rollout.sglang.max_restarts": 1,
}


def _write_config(tmp_path, server_python) -> pathlib.Path:
    ckpt = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    build_tiny_tokenizer(tmp_path / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    settings = SETTINGS | {"rollout.sglang.launch_command": launch_template(server_python)}
    return write_run_config(
        tmp_path / "sglang_run.py", tokenizer=tmp_path / "tokenizer", ckpt=ckpt, settings=settings
    )


def _main(config, workdir, devices: int, *extra: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        JAX_PLATFORMS="cpu",
        # The trainer's devices; the server it launches gets XLA_FLAGS as given here too,
        # which sglang-jax ignores beyond its own one device.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        SRPO_DEBUG_KILL_SERVER="2",
    )
    cmd = [sys.executable, "-m", "srpo_jax.main", f"--config={config}", f"--workdir={workdir}"]
    return subprocess.Popen(
        [*cmd, *extra],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _check_survived(workdir: pathlib.Path, log: str, overlap: int = 0) -> None:
    assert "SRPO_DEBUG_KILL_SERVER: SIGKILL" in log
    # The batch in flight failed fast on the dead process, the retry relaunched the server
    # on the weights it served: step 1's, or with overlap (killed during step 1) step 0's.
    assert "step 2: rollout attempt 1/2 failed" in log and "exited with code -9" in log, log
    served = "step_00000000" if overlap else "step_00000001"
    assert re.search(rf"relaunching it on \S*{served}", log), log
    records = {r["step"]: r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}
    assert sorted(records) == [1, 2]
    assert records[1]["rollout/server_restarts"] == overlap
    assert records[2]["rollout/server_restarts"] == 1
    assert [records[n]["rollout/weight_version_lag"] for n in (1, 2)] == [0, overlap]
    # Step 2 trained on a whole batch: every prompt's group of rollouts.
    assert records[2]["rollout/rows"] == PROMPTS * GROUP


def test_trainer_survives_a_server_killed_mid_batch(server_python, tmp_path):
    config = _write_config(tmp_path, server_python)
    proc = _main(config, tmp_path / "run", 1)
    log = proc.communicate(timeout=1500)[0]
    assert proc.returncode == 0, log[-6000:]
    _check_survived(tmp_path / "run", log)


@pytest.mark.parametrize("overlap", [0, 1], ids=["on_policy", "overlap"])
def test_two_learner_processes_share_the_server(server_python, tmp_path, overlap):
    config = _write_config(tmp_path, server_python)
    port = sglang_server.free_port()
    procs = [
        _main(
            config,
            tmp_path / "run",
            1,
            "--config.mesh.fsdp=2",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            f"--config.rollout.overlap={overlap}",
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=1500)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{log[-6000:]}"
    _check_survived(tmp_path / "run", logs[0], overlap)
    # Process 1 never talked to a server: it learnt of the failure through the broadcast;
    # with overlap the retry ended inside process 0's worker thread before the broadcast.
    assert ("generation failed on process 0" in logs[1]) == (not overlap)
    assert "relaunching" not in logs[1]
