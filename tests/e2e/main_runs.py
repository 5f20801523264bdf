"""Helpers of the tests that run `python -m srpo_jax.main` as processes of their own and hold
one run's metrics to another's (tests/e2e/test_multihost_trainer.py, tests/e2e/test_slurm.py),
and the session's warm start (tests/e2e/conftest.py).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
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


# The warm start: see tests/e2e/conftest.py.
WARMUP_STEPS = 300

# compare.run.build_warmup (the method study's shared warm-up) puts the tiny tokenizer in
# DIR/tokenizer; a copy at the top level lets tokenizer.path "" resolve to model.hf_path, as
# it does for a user's HF directory (test_export_evaluate runs the README's commands so).
_DRIVER = r"""
import pathlib, shutil, sys
from srpo_jax import config as config_lib
from srpo_jax.compare.run import build_warmup

repo, out, steps = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
cd = config_lib.load_config_file(str(repo / "configs" / "demo.py"))
with cd.unlocked():
    cd.data.synthetic_train_size, cd.data.synthetic_test_size = 64, 8
    cd.warmup.steps, cd.warmup.lr = steps, 3e-3
build_warmup(config_lib.from_config_dict(cd), out)
for f in (out / "tokenizer").iterdir():
    shutil.copy(f, out)
"""


def shared_root(tmp_path_factory) -> pathlib.Path:
    """This session's temporary root: the xdist workers' base directories sit in it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_warm_demo(root: pathlib.Path) -> pathlib.Path:
    """root/warm_demo, built once (the first caller builds, the others wait on the lock)."""
    out = root / "warm_demo"
    with open(root / "warm_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").is_file():
            return out
        partial = root / "warm_demo.partial"
        shutil.rmtree(partial, ignore_errors=True)  # a failed earlier attempt's
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(REPO_ROOT), str(partial), str(WARMUP_STEPS)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
        partial.rename(out)
    return out


def warm_start_args(path: pathlib.Path) -> list[str]:
    """`python -m srpo_jax.main` flags that start the demo config from the warm checkpoint."""
    return [
        f"--config.model.hf_path={path}",
        "--config.model.preset=",
        f"--config.tokenizer.path={path}",
    ]
