"""Helpers of the tests that run `python -m srpo_jax.main` as processes of their own and hold
one run's metrics to another's (tests/e2e/test_multihost_trainer.py, tests/e2e/test_slurm.py).
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from srpo_jax.trainer.metrics import read_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Metrics that measure time or this process's compiles, not the training itself.
VOLATILE = ("time/", "sync/", "compile/")


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 nobody listens on (all bound at once, so the OS
    cannot hand out one twice)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_main(workdir: pathlib.Path, devices: int, args: list[str], log: pathlib.Path):
    """`python -m srpo_jax.main --workdir=... *args` on `devices` CPU devices, its output
    to `log`."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    cmd = [sys.executable, "-m", "srpo_jax.main", f"--workdir={workdir}", *args]
    out = open(log, "w")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stable(records: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not any(k.startswith(p) for p in VOLATILE)} for r in records
    ]


def assert_same_metrics(got_path: pathlib.Path, want_path: pathlib.Path) -> list[dict]:
    """Both metrics files hold the same steps (at least 4 lines) and, but for VOLATILE, the
    same keys and values within rtol 1e-4 (collectives over gloo sum in another order);
    returns the records of `got_path`."""
    got, want = read_metrics(got_path), read_metrics(want_path)
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(got) >= 4
    for g, w in zip(_stable(got), _stable(want), strict=True):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-6, err_msg=f"{k} {w}")
    return got
