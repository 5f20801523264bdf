"""A disk that fills during a checkpoint write: one error line, nothing torn, an exact resume.

How the disk fills: the run's workdir is a small tmpfs, mounted inside a private mount
namespace (`unshare --mount`, plus `--map-root-user` when not root, which unprivileged user
namespaces allow), so writes really fail with ENOSPC and the mount vanishes with the
process. The tmpfs is sized from an uninterrupted run's own files: checkpoint 2 and the
small files fit, checkpoint 4 (as big again) does not. Mounting is required: where it is
not permitted the test fails saying so, it never skips.

Before the namespace goes, the shell copies the tmpfs's contents to a roomy directory: what
the full disk held. The test checks the killed run there (exit 1, exactly one `error:` line
naming the checkpoint's path and the bytes it needed, no traceback, checkpoint 2 intact and
equal to the uninterrupted run's, metrics.jsonl whole lines only), then "frees space" by
bind-mounting that roomy copy at the same workdir path and reruns the same command: it
resumes from checkpoint 2 and ends bit-identical to the uninterrupted run, with one training
line per step in metrics.jsonl.
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.test_resume import REPO_ROOT, TINY, assert_same_run, final_state

ARGS = TINY + [
    "--config.train.num_steps=5",
    "--config.warmup.steps=0",  # no reward needed here: the disk is what is tested
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=2",  # checkpoints 2, 4 and 5
]


def _disk_bytes(path: pathlib.Path) -> int:
    """Bytes the files under `path` occupy (allocated blocks, as tmpfs counts them)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _run_in_namespace(workdir: pathlib.Path, mount: str, logs: pathlib.Path, after: str = ""):
    """Runs main on ARGS with `mount` (a shell command) setting up `workdir` first, in a
    private mount namespace; `after` runs once main exits. Returns (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    main = shlex.join([sys.executable, "-m", "srpo_jax.main", f"--workdir={workdir}", *ARGS])
    script = f"{mount} || exit 97; {main}; rc=$?; {after or 'true'}; exit $rc"
    unshare = ["unshare", "--mount"] + ([] if os.getuid() == 0 else ["--map-root-user"])
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        rc = subprocess.run(
            [*unshare, "sh", "-c", script], cwd=REPO_ROOT, env=env, stdout=out, stderr=err
        ).returncode
    out_text, err_text = (pathlib.Path(f"{logs}.{s}").read_text() for s in ("out", "err"))
    assert rc != 97, f"could not mount the test's workdir ({mount}): {err_text[-2000:]}"
    return rc, out_text, err_text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount a small tmpfs as the workdir")
    root = tmp_path_factory.mktemp("disk_full")
    full, workdir, kept = root / "full", root / "workdir", root / "kept"
    for d in (full, workdir, kept):
        d.mkdir()
    rc, _, err = _run_in_namespace(full, "true", root / "full")
    assert rc == 0, err[-3000:]
    # Room for the small files and checkpoint 2, and half of checkpoint 4.
    ckpt = _disk_bytes(full / "checkpoints" / "2")
    small = _disk_bytes(full) - _disk_bytes(full / "checkpoints") - _disk_bytes(full / "curves.png")
    size_kib = (small + ckpt + ckpt // 2) // 1024
    mount = f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(workdir))}"
    copy = f"cp -a {shlex.quote(str(workdir))}/. {shlex.quote(str(kept))}/"
    failed = _run_in_namespace(workdir, mount, root / "failed", after=copy)
    shutil.copytree(kept, root / "as_failed")  # for the checks: the resume below writes to kept
    # The full disk's contents are now in `kept`; bind it at the same path: space freed.
    bind = f"mount --bind {shlex.quote(str(kept))} {shlex.quote(str(workdir))}"
    resumed = _run_in_namespace(workdir, bind, root / "resumed")
    return full, workdir, root / "as_failed", kept, failed, resumed


def assert_last_checkpoint_and_whole_lines(workdir: pathlib.Path, full: pathlib.Path, step: int):
    """The stopped run's last checkpoint is `step` and equals the uninterrupted run's (in
    `full`) leaf for leaf; its metrics.jsonl holds whole lines only. Returns those lines."""
    last, state = final_state(workdir)
    assert last == step
    _, expected = final_state(full, step)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key, strict=True)
    raw = (workdir / "metrics.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(ln) for ln in raw.decode().splitlines()]  # raises on a torn line


@pytest.mark.slow
def test_full_disk_stops_with_one_line_naming_path_and_bytes(runs):
    full, workdir, _, _, (rc, out, err), _ = runs
    assert rc == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.lower().startswith("error")]
    assert len(errors) == 1, err[-3000:]
    line = errors[0]
    assert line.startswith("error: disk full: could not write checkpoint step 4 to "), line
    assert f"{workdir / 'checkpoints' / '4'} (" in line, line
    # The bytes: the train state's size plus its host record, at least the arrays' bytes.
    _, arrays = final_state(full)
    state_bytes = sum(a.nbytes for a in arrays.values())
    needed = int(line.split(" (")[1].split(" bytes needed")[0])
    assert state_bytes <= needed < state_bytes + 1_000_000, (needed, state_bytes)
    assert "the last complete checkpoint: step 2" in line, line


@pytest.mark.slow
def test_full_disk_keeps_the_last_checkpoint_and_whole_metric_lines(runs):
    full, _, kept, _, _, _ = runs
    # Checkpoint 4's partial directory was removed; 2 restores and equals the full run's 2.
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["2"]
    lines = assert_last_checkpoint_and_whole_lines(kept, full, 2)
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] >= 4, steps
    for ln in (kept / "eval_scores.jsonl").read_text().splitlines():
        json.loads(ln)


@pytest.mark.slow
def test_after_space_is_freed_the_same_command_resumes_exactly(runs):
    full, workdir, _, kept, _, (rc, out, err) = runs
    assert rc == 0, err[-3000:]
    assert f"resumed from checkpoint step 2 in {workdir / 'checkpoints'}" in out
    records = read_metrics(kept / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]  # one line per step
    assert_same_run(full, kept, 5)
