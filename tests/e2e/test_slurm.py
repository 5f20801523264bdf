"""launch/slurm_gpu.sh under a real SLURM: a two-node cluster on this machine.

slurmctld and two slurmd (n1, n2, one CPU each, auth/none) run in a private mount namespace
(tests/e2e/slurm_cluster.sh); `sbatch --wait` submits the real script in CPU mode
(--gpus-per-node 0), which starts the tiny demo as two JAX processes, one per node, through
srun. Its metrics must equal one process owning two CPU devices with the same mesh (data=2):
the same data and seeds, and the collectives over gloo sum the same numbers (rtol 1e-4, as in
test_multihost_trainer.py). An allocation with fewer nodes than --learner-nodes is refused
with one error: line and exit 2, through the same SLURM.

The pool test: one learner node (n1) and the SGLang pool on the other (n2), the pool being
launch/sglang_pool.sh in CPU mode, a real sglang-jax server started through srun. The
learner starts once the pool wrote its URL file (the server started with --deterministic:
the flag name must be one sglang-jax accepts), trains 2 steps over the server
(rollout.sglang.sync=none: sglang-jax cannot load new weights), and when the job ends no
process of it is left, the server's included.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax.data.tokenizer import build_tiny_tokenizer
from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.main_runs import REPO_ROOT as REPO
from tests.e2e.main_runs import assert_same_metrics, free_ports, start_main

# The real-server helpers of tests/rollout (the sglang-jax venv, its tiny checkpoint and the
# server flags that start it fast on CPU), shared rather than copied.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "rollout"))
import sglang_env  # noqa: E402

CLUSTER = REPO / "tests" / "e2e" / "slurm_cluster.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"
TIMEOUT_S = 600
PACKAGES = ["slurmctld", "slurmd", "slurm-client"]
OVERRIDES = [
    "--config.data.synthetic_train_size=64",
    "--config.data.synthetic_test_size=8",
    "--config.algo.group_size=4",
    "--config.train.prompts_per_step=4",
    "--config.train.mini_batch_prompts=4",
    "--config.train.num_steps=2",
    "--config.warmup.steps=40",
    "--config.warmup.lr=3e-3",
    "--config.eval.every_steps=2",
    "--config.eval.num_samples=2",
    "--config.eval.max_examples=4",
    "--config.checkpoint.every_steps=0",
    "--config.model.hf_path=",  # the script sets --model-path; the demo's model is random init
]


def _ensure_slurm():
    if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("SLURM is not installed and cannot be: installing it needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, timeout=600)


def _jobs_script(tmp: pathlib.Path, port: int) -> pathlib.Path:
    """The sbatch calls, run inside the cluster's namespace: a refused one, then the demo."""
    python = sys.executable
    common = (
        f"--gpus-per-node 0 --model-path none --python {python} --port {port} "
        f"--config configs/demo.py"
    )
    script = tmp / "jobs.sh"
    script.write_text(
        f"cd {REPO}\n"
        f"sbatch -N 1 --wait -o {tmp}/bad.out {SLURM} --learner-nodes 2 "
        f"--shared-dir {tmp}/bad {common}; echo $? > {tmp}/bad.rc\n"
        f"sbatch -N 2 --wait -o {tmp}/job.out {SLURM} --shared-dir {tmp}/shared {common} "
        f"-- {' '.join(OVERRIDES)}; echo $? > {tmp}/job.rc\n"
    )
    return script


@pytest.mark.slow
def test_slurm_script_runs_the_demo_on_two_nodes(tmp_path):
    _ensure_slurm()
    # The private cluster needs root and unshare (a private mount namespace); CI has both.
    assert os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare"
    ctld, n1, n2, coordinator = free_ports(4)
    jobs = _jobs_script(tmp_path, coordinator)
    # The reference: one process owning both devices, the same mesh (data=2).
    ref_args = ["--config=configs/demo.py", "--config.mesh.data=2", *OVERRIDES]
    ref = start_main(tmp_path / "ref", 2, ref_args, tmp_path / "ref.log")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        cluster = subprocess.run(
            ["unshare", "-m", "bash", str(CLUSTER), str(tmp_path / "slurm"),
             str(ctld), str(n1), str(n2), "bash", str(jobs)],  # fmt: skip
            capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
        )  # fmt: skip
        ref.wait(timeout=TIMEOUT_S)
    finally:
        if ref.poll() is None:
            ref.kill()
    assert cluster.returncode == 0, cluster.stdout + cluster.stderr
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-5000:]

    bad = (tmp_path / "bad.out").read_text()
    assert (tmp_path / "bad.rc").read_text().strip() == "2", bad
    assert bad.strip().splitlines() == [
        "error: slurm_gpu.sh: --learner-nodes 2 > 1 nodes in the allocation",
    ], bad
    job_out = (tmp_path / "job.out").read_text()
    assert (tmp_path / "job.rc").read_text().strip() == "0", job_out[-5000:]

    assert_same_metrics(
        tmp_path / "shared" / "workdir" / "metrics.jsonl", tmp_path / "ref" / "metrics.jsonl"
    )


def _server_python() -> pathlib.Path:
    python312 = sglang_env.find_python312()
    assert python312, "sglang-jax needs Python 3.12: none found (set SRPO_SGLANG_PYTHON)"
    return sglang_env.ensure_venv(python312)


def _cpu_server_args() -> str:
    """sglang_env's fast-CPU-start flags, less what the pool sets itself."""
    words = sglang_env.SERVER_ARGS.split()
    words = words[words.index("{port}") + 1 :]
    for own in ("--device", "cpu", "--skip-tokenizer-init"):
        words.remove(own)
    return " ".join(words)


def _job_processes(slurm_conf: pathlib.Path) -> list[str]:
    """pid and command of every process started by a job of this cluster (its environment
    names the cluster's slurm.conf and a job id); the daemons have no job id."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            env = proc.joinpath("environ").read_bytes().split(b"\0")
            cmd = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if f"SLURM_CONF={slurm_conf}".encode() in env and any(
            e.startswith(b"SLURM_JOB_ID=") for e in env
        ):
            found.append(f"{proc.name} {cmd}")
    return found


_LEFT_OVER = (
    "import pathlib, sys\n"
    + inspect.getsource(_job_processes)
    + "print(*_job_processes(sys.argv[1]), sep='\\n')\n"
)


@pytest.mark.server
@pytest.mark.slow
def test_slurm_script_runs_a_learner_node_and_an_sglang_pool_node(tmp_path):
    _ensure_slurm()
    assert os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare"
    server_python = _server_python()
    ckpt = sglang_env.write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    build_tiny_tokenizer(tmp_path / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    # model.hf_path comes from the script's --model-path (ckpt=None).
    config = sglang_env.write_run_config(
        tmp_path / "pool_run.py", tokenizer=tmp_path / "tokenizer", ckpt=None
    )
    ctld, n1, n2, coordinator, server_port = free_ports(5)
    shared = tmp_path / "shared"
    jobs = tmp_path / "jobs.sh"
    jobs.write_text(
        f"cd {REPO}\n"
        f"sbatch -N 2 --wait -o {tmp_path}/job.out {SLURM} --learner-nodes 1 --gpus-per-node 0 "
        f"--model-path {ckpt} --shared-dir {shared} --config {config} --python {sys.executable} "
        f"--port {coordinator} --sglang-python {server_python} --sglang-port {server_port} "
        f"--sglang-args '{_cpu_server_args()}' --deterministic; echo $? > {tmp_path}/job.rc\n"
        # sbatch --wait is back: the job is over, the daemons still run. The check runs on
        # its own (this module imports jax), so that its start-up delays nothing.
        f"{sys.executable} -c {shlex.quote(_LEFT_OVER)} {tmp_path}/slurm/slurm.conf "
        f"> {tmp_path}/left.txt\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # No persistent compile cache for the server (sglang_env.server_env says why).
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cluster = subprocess.run(
        ["unshare", "-m", "bash", str(CLUSTER), str(tmp_path / "slurm"),
         str(ctld), str(n1), str(n2), "bash", str(jobs)],  # fmt: skip
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
    )  # fmt: skip
    assert cluster.returncode == 0, cluster.stdout + cluster.stderr
    job_out = (tmp_path / "job.out").read_text()
    assert (tmp_path / "job.rc").read_text().strip() == "0", job_out[-5000:]

    url = f"http://n2:{server_port}"
    assert (shared / "sglang_urls.txt").read_text().split() == [url]
    records = {r["step"]: r for r in read_metrics(shared / "workdir" / "metrics.jsonl")}
    assert sorted(records) == [1, 2], job_out[-5000:]
    for r in records.values():
        assert r["rollout/rows"] == 2 * 4 and r["sync/num_servers"] == 1
        assert np.isfinite(r["loss"])
    # Step 1 samples the checkpoint the learner starts from, both in fp32: the server's
    # log-probs of its tokens equal the learner's (1e-4, as the server tests hold them).
    assert records[1]["logp_gap/max"] < 1e-4, records[1]
    # The rollouts came from the pool's server: its log shows the learner's requests.
    log = (shared / "sglang_logs" / f"sglang_n2_{server_port}.log").read_text()
    assert log.count("POST /generate") >= 2, log[-3000:]
    # --deterministic reached the real server under the flag name sglang-jax knows.
    assert "enable_deterministic_sampling=True" in log
    left = (tmp_path / "left.txt").read_text().strip()
    assert left == "", f"left after the job ended:\n{left}"
    assert _job_processes(tmp_path / "slurm" / "slurm.conf") == []
