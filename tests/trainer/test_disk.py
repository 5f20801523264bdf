"""Full-disk handling of the run's files: whole lines, whole files, one message.

A disk that fills mid-write is simulated here by an os.write that writes part of its bytes
and then fails with ENOSPC, as a real full file system does; tests/e2e/test_disk_full.py
fills a real tmpfs under the whole trainer.
"""

import asyncio
import errno
import json
import os
import types

import pytest

from srpo_jax import disk
from srpo_jax.trainer import checkpoint, metrics


@pytest.fixture
def disk_fills_after(monkeypatch):
    """disk_fills_after(n): os.write accepts n more bytes, then raises ENOSPC."""
    real_write = os.write

    def arm(room: int):
        left = [room]

        def write(fd, data):
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = real_write(fd, bytes(data[: left[0]]))
            left[0] -= n
            return n

        monkeypatch.setattr(disk.os, "write", write)
        return lambda: monkeypatch.setattr(disk.os, "write", real_write)  # space freed

    return arm


def test_metrics_line_that_does_not_fit_is_not_kept_and_names_path_and_bytes(
    tmp_path, disk_fills_after
):
    w = metrics.MetricsWriter(tmp_path)
    w.write(1, {"loss": 1.0})
    line = json.dumps({"step": 2, "loss": 2.0}) + "\n"
    free_space = disk_fills_after(10)  # the line is torn after 10 bytes
    with pytest.raises(disk.DiskFullError) as e:
        w.write(2, {"loss": 2.0})
    path = tmp_path / "metrics.jsonl"
    assert str(e.value).startswith(f"disk full: could not write {path} ({len(line)} bytes needed")
    raw = path.read_bytes()
    assert raw == (json.dumps({"step": 1, "loss": 1.0}) + "\n").encode()  # torn part gone
    free_space()
    w.write(2, {"loss": 2.0})  # the same writer goes on once there is room
    w.close()
    assert [r["step"] for r in map(json.loads, path.read_text().splitlines())] == [1, 2]


def test_reopening_cuts_a_torn_last_line_so_the_next_line_stands_alone(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        w.write(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # killed mid-write
    with metrics.MetricsWriter(tmp_path) as w:  # no resume step: append
        w.write(2, {"loss": 2.0})
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 2.0)]


def test_resume_keeps_one_line_per_step(tmp_path):
    """A killed run wrote steps 1..4 (4 torn); resumed from checkpoint 2 it redoes 3..5."""
    with metrics.MetricsWriter(tmp_path) as w:
        for step in (1, 2, 3):
            w.write(step, {"loss": float(step)})
        w.write(2, {"eval/avg_at_k": 0.5})  # an evaluation line shares its step's number
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')
    with metrics.MetricsWriter(tmp_path, resume_step=2) as w:
        for step in (3, 4, 5):
            w.write(step, {"loss": 10.0 * step})
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss")) for r in lines] == [
        (1, 1.0), (2, 2.0), (2, None), (3, 30.0), (4, 40.0), (5, 50.0)
    ]  # fmt: skip


def test_whole_files_keep_their_old_version_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")

    def no_room(fd):  # delayed allocation (NFS, ext4): the write is refused at fsync
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "fsync", no_room)
    with pytest.raises(disk.DiskFullError, match=rf"could not write {path} \(4 bytes needed"):
        disk.write_atomic(path, b"new!")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temporary left


def test_disk_full_is_recognised_through_chains_and_tensorstore_text():
    assert disk.is_disk_full(OSError(errno.ENOSPC, "x"))
    assert disk.is_disk_full(OSError(errno.EDQUOT, "x"))
    assert not disk.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/w/_sharding": Failed to write 83 '
        "bytes to file 18: No space left on device [os_error_code='28']"
    )
    assert disk.is_disk_full(ts)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert disk.is_disk_full(outer)
    assert not disk.is_disk_full(RuntimeError("something else"))


def test_closed_loop_callbacks_are_dropped_and_other_errors_pass():
    seen = []
    hook = checkpoint._DropClosedLoopCallbacks(lambda u: seen.append(u.exc_value))
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        late = e
    other = RuntimeError("Event loop is closed")  # the same text from elsewhere: kept
    for value in (late, other):
        hook(types.SimpleNamespace(exc_value=value, exc_traceback=value.__traceback__))
    assert seen == [other]
