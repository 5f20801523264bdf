"""A disk that fills during the SGLang weight export (the disk route): one error line, no
export a server could load half-written, the checkpoints intact, an exact resume.

`python -m srpo_jax.main` trains 2 steps with rollout.engine=sglang over a real sglang-jax
server that the run launches on its own export. The disk route on sglang-jax is
sync=restart: sglang-jax 0.1.0rc0 has no /update_weights_from_disk (docs/rollout.md), so
each step's weights are exported to rollout.sglang.export_dir and the server relaunched on
them. The export is the same code for sync=update_from_disk (WeightExports.write, before
any request to a server), so what is asserted here holds for that route too; a real server
is still needed, because it serves step 1's rollouts and is what must never be pointed at
a torn export, and because the run must stop it when it stops.

How the disk fills: export_dir is a small tmpfs mounted inside a private mount namespace
(`unshare --mount`, as tests/e2e/test_disk_full.py does for checkpoints), sized for two
and a half exports (from the bf16 size of the checkpoint's tensors): the initial export
(step 0) and step 1's fit, step 2's does not (keep_exports=2 keeps step 0 until step 2's
push). The workdir, where checkpoints and metrics go, is roomy: this test is about the
export dir filling up (on a cluster it is a shared file system of its own). Server logs go
to the workdir too (rollout.sglang.log_dir), so the tmpfs holds the exports alone and the
point where it fills does not depend on how much a server logs.

Beside it the same command runs uninterrupted on a roomy disk (deterministic sampling, one
row per request, as in test_sglang_resume.py, so that the two can be compared bit for bit).
The run that fills the disk must exit 1 with exactly one `error:` line naming step 2's
export path and the bytes it needed (the size of a complete export: the uninterrupted run's
step-2 export), with no traceback; it leaves no step_00000002 and no partial folder in the
export dir, and step 1's export there is complete and identical to the uninterrupted run's;
checkpoint 1 is intact and equal to the uninterrupted run's; metrics.jsonl holds whole
lines (step 1's); no server process is left running. Then the space is freed (the full
tmpfs's contents copied to a roomy directory and bind-mounted at the same path) and the
same command resumes from checkpoint 1 and ends with the uninterrupted run's metrics and
checkpoint bit for bit.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from sglang_env import launch_template, write_run_config, write_tiny_checkpoint

from srpo_jax.data.tokenizer import build_tiny_tokenizer
from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.test_disk_full import assert_last_checkpoint_and_whole_lines
from tests.e2e.test_resume import final_state

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = {
    "train.num_steps": 2,
    "checkpoint.every_steps": 1,
    "checkpoint.keep": 5,
    "rollout.engine": "sglang",
    "rollout.sglang.sync": "restart",
    "rollout.sglang.base_port": 0,  # free ports: two runs side by side
    "rollout.sglang.deterministic": True,
    "rollout.sglang.rows_per_request": 1,
    "rollout.sglang.max_concurrency": 1,
}


def _volatile(key: str) -> bool:
    """Metrics that time something or count this process's compiles."""
    return key.startswith(("time/", "compile/")) or key.endswith(("_s", "seconds"))


def _stable(workdir: pathlib.Path) -> list[dict]:
    records = read_metrics(workdir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if not _volatile(k)} for r in records]


def _export_bytes(ckpt: pathlib.Path) -> int:
    """The bf16 bytes of the checkpoint's tensors: an export's size but for its headers."""
    total = 0
    for f in ckpt.glob("*.safetensors"):
        with safe_open(f, framework="numpy") as st:
            total += sum(2 * int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())  # noqa: SIM118
    return total


def _servers_left(root: pathlib.Path) -> list[int]:
    """Pids of server processes still running on an export under `root`."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "launch_server" in cmd and str(root) in cmd:
            found.append(int(proc.name))
    return found


def _main(config, workdir, logs: pathlib.Path, mount: str = "true", after: str = "true"):
    """Starts main in a private mount namespace with `mount` (a shell command) run first and
    `after` once main exits; its output goes to files beside the workdir."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    main = shlex.join([sys.executable, "-m", "srpo_jax.main", f"--config={config}",
                       f"--workdir={workdir}"])  # fmt: skip
    script = f"{mount} || exit 97; {main}; rc=$?; {after}; exit $rc"
    unshare = ["unshare", "--mount"] + ([] if os.getuid() == 0 else ["--map-root-user"])
    proc = subprocess.Popen(
        [*unshare, "sh", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        stdout=open(f"{logs}.out", "w"),  # noqa: SIM115 - closed by the child's exit
        stderr=open(f"{logs}.err", "w"),  # noqa: SIM115
    )
    proc.logs = logs
    return proc


def _finish(proc, timeout=1500) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (pathlib.Path(f"{proc.logs}.{s}").read_text() for s in ("out", "err"))
    assert proc.returncode != 97, f"could not mount the export dir: {err[-2000:]}"
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(server_python, tmp_path_factory):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount a small tmpfs as the export dir")
    root = tmp_path_factory.mktemp("sglang_disk_full")
    ckpt = write_tiny_checkpoint(root / "tiny", seed=0)
    build_tiny_tokenizer(root / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    launch = launch_template(server_python) + " --enable-single-process"  # boots faster
    full, workdir, exports, kept = (root / n for n in ("full", "workdir", "exports", "kept"))
    for d in (exports, kept):
        d.mkdir()

    def config(name, **extra):
        settings = SETTINGS | {"rollout.sglang.launch_command": launch} | extra
        return write_run_config(root / name, tokenizer=root / "tokenizer", ckpt=ckpt,
                                settings=settings)  # fmt: skip

    full_cfg = config("full.py")
    cfg = config("run.py", **{"rollout.sglang.export_dir": str(exports),
                              "rollout.sglang.log_dir": str(workdir / "server_logs")})  # fmt: skip
    size_kib = (5 * _export_bytes(ckpt) // 2) // 1024
    mount = f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(exports))}"
    copy = f"cp -a {shlex.quote(str(exports))}/. {shlex.quote(str(kept))}/"
    try:
        procs = [_main(full_cfg, full, root / "full"),
                 _main(cfg, workdir, root / "failed", mount, after=copy)]  # fmt: skip
        (rc_full, _, err_full), failed = (_finish(p) for p in procs)
        assert rc_full == 0, err_full[-3000:]
        left = _servers_left(root)
        shutil.copytree(kept, root / "as_failed")  # for the checks: the resume writes to kept
        shutil.copytree(workdir, root / "workdir_as_failed")
        bind = f"mount --bind {shlex.quote(str(kept))} {shlex.quote(str(exports))}"
        resumed = _finish(_main(cfg, workdir, root / "resumed", bind))
    finally:
        for pid in _servers_left(root):
            os.kill(pid, 9)
    return dict(root=root, full=full, workdir=workdir, exports=exports, failed=failed,
                left=left, resumed=resumed)  # fmt: skip


def test_full_export_dir_stops_with_one_line_naming_path_and_bytes(runs):
    rc, out, err = runs["failed"]
    assert rc == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.lower().startswith("error")]
    assert len(errors) == 1, err[-3000:]
    line, path = errors[0], runs["exports"] / "step_00000002"
    assert line.startswith(f"error: disk full: could not write the weight export of step 2 to "
                           f"{path} ("), line  # fmt: skip
    # The bytes: a complete export's, as the uninterrupted run wrote it.
    full_export = runs["full"] / "export" / "step_00000002"
    size = sum(f.stat().st_size for f in full_export.iterdir())
    assert f"({size} bytes needed, " in line, (line, size)
    assert line.endswith(
        f"the last complete export: step_00000001 in {runs['exports']}. Free space and rerun "
        "the same command to resume from the last checkpoint"
    ), line
    assert runs["left"] == [], "the stopped run left its server running"


def test_no_torn_export_and_the_last_checkpoint_intact(runs):
    root = runs["root"]
    as_failed, workdir = root / "as_failed", root / "workdir_as_failed"
    # Nothing of step 2 (no step_00000002, no .partial): no server can be pointed at it.
    assert sorted(p.name for p in as_failed.iterdir()) == ["step_00000000", "step_00000001"]
    mine, full = as_failed / "step_00000001", runs["full"] / "export" / "step_00000001"
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in full.iterdir())
    for f in full.iterdir():
        assert (mine / f.name).read_bytes() == f.read_bytes(), f.name
    lines = assert_last_checkpoint_and_whole_lines(workdir, runs["full"], 1)
    assert [r["step"] for r in lines if "loss" in r] == [1]


def test_after_space_is_freed_the_same_command_resumes_exactly(runs):
    rc, out, err = runs["resumed"]
    assert rc == 0, err[-3000:]
    assert "resumed from checkpoint step 1" in out + err, (out + err)[-3000:]
    full, again = _stable(runs["full"]), _stable(runs["workdir"])
    assert [r["step"] for r in again if "loss" in r] == [1, 2]  # one line per step
    assert [r["step"] for r in again] == [r["step"] for r in full]
    for a, b in zip(full, again, strict=True):
        assert a == b, f"step {a['step']}: " + str(
            {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        )
    step, state = final_state(runs["workdir"])
    _, full_state = final_state(runs["full"])
    assert step == 2 and state.keys() == full_state.keys()
    for key, value in full_state.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key, strict=True)
