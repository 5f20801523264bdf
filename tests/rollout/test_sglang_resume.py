"""Exact resume over a real SGLang-family server (sglang-jax on CPU) with
rollout.sglang.deterministic on.

`python -m srpo_jax.main` trains 4 steps with rollout.engine=sglang: it launches the server
itself (the engine adds --enable-deterministic-sampling to the launch command) and relaunches
it on each new export (sync=restart: sglang-jax has no update route). An uninterrupted run,
and beside it the same run SIGKILLed during step 4 (after step 3's metrics line, two steps
past the step-2 checkpoint; its orphaned server is killed by the test), then resumed with the
same command. The resumed run redraws steps 3 and 4 on servers with another history (the
uninterrupted run's step-3 server first served the step-2 eval; without the flag that moves
its random state and step 3 draws other tokens: this test, run with the mode off, failed on
step 3's logp_gap/mean and logp_gap/max), and every metric of every step must equal
the uninterrupted run's bit for bit; only wall-clock and compile counters may differ.

With rollout.overlap=1 (the `runs` fixture's second parameter) the same holds for the
overlapped loop: step n+1's rollout is generated in a worker thread while step n trains, and
the run is killed during step 3, its step-4 rollout in flight; the resumed run starts from the
step-2 checkpoint, which carries the completed step-3 rollout.

Rows go one per request, one request at a time: sglang-jax's deterministic flag fixes the
sampler's noise, not its forward's rounding, which changes with how the scheduler batches
rows (the same rows split into two requests: same tokens, 47 of 128 log-probs off by up to
2.4e-6), and under load the scheduler's batching depends on timing. docs/rollout.md.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from sglang_env import launch_template, write_run_config, write_tiny_checkpoint

from srpo_jax.data.tokenizer import build_tiny_tokenizer
from srpo_jax.trainer.metrics import read_metrics

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# The demo on the sglang-jax-friendly tiny checkpoint (sglang_env.RUN_SETTINGS), 4 short steps.
SETTINGS = {
    "train.num_steps": 4,
    # An eval at step 2 runs on the server that then serves step 3 in the uninterrupted
    # run; the resumed run skips it, so its step-3 server has another history.
    "eval.every_steps": 2,
    "eval.max_examples": 2,
    "eval.num_samples": 1,
    "checkpoint.every_steps": 2,
    "rollout.engine": "sglang",
    "rollout.sglang.base_port": 0,  # free ports: two runs side by side
    "rollout.sglang.deterministic": True,
    "rollout.sglang.sync": "restart",
    # One row per batch: sglang-jax's forward is not batch-invariant (its log-probs move
    # by ~1e-6 with the batch's make-up), and timing decides how it batches rows.
    "rollout.sglang.rows_per_request": 1,
    "rollout.sglang.max_concurrency": 1,
}


def _is_volatile(key: str) -> bool:
    """Metrics that time something or count this process's compiles."""
    return key.startswith(("time/", "compile/")) or key.endswith(("_s", "seconds"))


def _stable(workdir: pathlib.Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not _is_volatile(k)}
        for r in read_metrics(workdir / "metrics.jsonl")
    ]


def _start(config, workdir, tag: str, **env_extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    env.update(env_extra)
    cmd = [sys.executable, "-m", "srpo_jax.main", f"--config={config}", f"--workdir={workdir}"]
    log = open(f"{workdir}.{tag}.log", "w")  # noqa: SIM115 - closed by the child's exit
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    return proc


def _finish(proc: subprocess.Popen, timeout=1200) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, pathlib.Path(proc.log_path).read_text()


def _kill_servers_under(workdir: pathlib.Path) -> list[int]:
    """SIGKILLs the server processes a killed run left behind: they run in their own session
    (so a SIGKILL of the trainer does not reach them) on an export under its workdir."""
    killed = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"{workdir}/export/" in cmdline and "launch_server" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


# overlap -> the step during which the run is killed (overlap=1: one whose next rollout is
# in flight, so not the last step).
KILL_STEP = {0: 4, 1: 3}


@pytest.fixture(scope="module", params=[0, 1], ids=["on_policy", "overlap"])
def runs(request, server_python, tmp_path_factory):
    overlap = request.param
    root = tmp_path_factory.mktemp(f"sglang_resume_{overlap}")
    ckpt = write_tiny_checkpoint(root / "tiny", seed=0)
    build_tiny_tokenizer(root / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    # One server process instead of four: boots in a third of the time on CPU.
    launch = launch_template(server_python) + " --enable-single-process"
    settings = SETTINGS | {
        "rollout.sglang.launch_command": launch,
        "rollout.overlap": overlap,
    }
    config = write_run_config(
        root / "run.py", tokenizer=root / "tokenizer", ckpt=ckpt, settings=settings
    )
    full, killed = root / "full", root / "killed"
    try:
        # Side by side: each mostly waits for its own server to boot.
        procs = [
            _start(config, full, "full"),
            _start(config, killed, "killed", SRPO_DEBUG_KILL=f"mid_step:{KILL_STEP[overlap]}"),
        ]
        results = [_finish(p) for p in procs]
        orphans = _kill_servers_under(killed)
        first_life = _stable(killed)
        resumed = _finish(_start(config, killed, "resumed"))
    finally:
        _kill_servers_under(full)
        _kill_servers_under(killed)
    return dict(full=full, killed=killed, results=results, resumed=resumed, orphans=orphans,
                first_life=first_life, overlap=overlap)  # fmt: skip


def test_resumed_run_reproduces_every_metric_bit_for_bit(runs):
    (rc_full, log_full), (rc_killed, log_killed) = runs["results"]
    assert rc_full == 0, log_full[-6000:]
    assert rc_killed == -signal.SIGKILL, log_killed[-6000:]
    assert runs["orphans"], "the killed run left no server behind to clean up"
    died_in = KILL_STEP[runs["overlap"]]
    assert [r["step"] for r in runs["first_life"] if "loss" in r] == list(range(1, died_in))
    rc, log = runs["resumed"]
    assert rc == 0, log[-6000:]
    assert "resumed from checkpoint step 2" in log, log[-6000:]
    full, again = _stable(runs["full"]), _stable(runs["killed"])
    assert [r["step"] for r in again if "loss" in r] == [1, 2, 3, 4]
    lags = [r["rollout/weight_version_lag"] for r in again if "loss" in r]
    assert lags == ([0.0, 1.0, 1.0, 1.0] if runs["overlap"] else [0.0] * 4)
    assert [r["step"] for r in again] == [r["step"] for r in full]
    for a, b in zip(full, again, strict=True):
        assert a == b, f"step {a['step']}: " + str(
            {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        )
    # The servers were launched with the flag (their logs are under the export folder).
    logs = list((runs["killed"] / "export" / "logs").glob("sglang_*.log"))
    assert logs and all("--enable-deterministic-sampling" in p.read_text() for p in logs)
