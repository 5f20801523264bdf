"""launch/slurm_gpu.sh under a real SLURM: a two-node cluster on this machine.

slurmctld and two slurmd (n1, n2, one CPU each, auth/none) run in a private mount namespace
(tests/e2e/slurm_cluster.sh); `sbatch --wait` submits the real script in CPU mode
(--gpus-per-node 0), which starts the tiny demo as two JAX processes, one per node, through
srun. Its metrics must equal one process owning two CPU devices with the same mesh (data=2):
the same data and seeds, and the collectives over gloo sum the same numbers (rtol 1e-4, as in
test_multihost_trainer.py). An allocation with fewer nodes than --learner-nodes is refused
with one error: line and exit 2, through the same SLURM.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax.trainer.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
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
VOLATILE = ("time/", "sync/", "compile/")


def _ensure_slurm():
    if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("SLURM is not installed and cannot be: installing it needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, timeout=600)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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


def _reference(workdir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    cmd = [sys.executable, "-m", "srpo_jax.main", "--config=configs/demo.py",
           f"--workdir={workdir}", "--config.mesh.data=2", *OVERRIDES]  # fmt: skip
    out = open(log, "w")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stable(records):
    return [
        {k: v for k, v in r.items() if not any(k.startswith(p) for p in VOLATILE)} for r in records
    ]


@pytest.mark.slow
def test_slurm_script_runs_the_demo_on_two_nodes(tmp_path):
    _ensure_slurm()
    # The private cluster needs root and unshare (a private mount namespace); CI has both.
    assert os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare"
    ctld, n1, n2, coordinator = _free_ports(4)
    jobs = _jobs_script(tmp_path, coordinator)
    ref = _reference(tmp_path / "ref", tmp_path / "ref.log")
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

    got = read_metrics(tmp_path / "shared" / "workdir" / "metrics.jsonl")
    want = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(got) >= 4
    for g, w in zip(_stable(got), _stable(want), strict=True):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-6, err_msg=f"{k} {w}")
