"""A full disk as one line: `DiskFullError` names the path and the bytes a write needed.

A run writes four kinds of files to its workdir: checkpoints (trainer/checkpoint.py),
metrics (trainer/metrics.py: metrics.jsonl, TensorBoard events, curves.png),
eval_scores.jsonl and the resolved config.json (trainer/report.py); the SGLang disk route
adds the weight exports (rollout/weight_exports.py), hence this module sits below both
packages. When the disk (or a quota) fills during one of those
writes, the run stops with DiskFullError, which main prints as one `error:` line and exit 1
(the runtime-fault convention of TrainingAborted), with no traceback:

    error: disk full: could not write /run/metrics.jsonl (1830 bytes needed, 0 bytes free) ...

What stays on disk is always whole:
  - a line of a JSON-lines file is written whole or not at all (`append_whole` truncates a
    partly written line away), so readers never meet a torn line;
  - whole files (config.json, curves.png) are written to a temporary file and renamed, so
    the old version stays until the new one is complete;
  - a checkpoint that does not fit is never finalised; its partial directory is removed and
    the previous checkpoint stays the latest (checkpoint.py).
After space is freed, rerunning the same command resumes from the last complete checkpoint.

Errors are recognised by errno (ENOSPC, EDQUOT) anywhere in the exception chain, or by the
text tensorstore puts in the ValueError it raises for orbax's array writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
from collections.abc import Iterator

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# tensorstore reports an OS error inside a ValueError's text, e.g. "... No space left on
# device [os_error_code='28']".
NO_SPACE_TEXT = (
    "No space left on device",
    "Disk quota exceeded",
    f"os_error_code='{errno.ENOSPC}'",
)


class DiskFullError(RuntimeError):
    """A write failed for lack of space; the message names the path and the bytes needed."""

    def __init__(self, path: str | os.PathLike, needed_bytes: int | None, *, what: str = ""):
        self.path = pathlib.Path(path)
        self.needed_bytes = needed_bytes
        target = f"{what} to {self.path}" if what else str(self.path)
        free = free_bytes(self.path)
        free_text = f", {free} bytes free" if free is not None else ""
        if needed_bytes is None:
            detail = f"no space left on device{free_text}"
        else:
            detail = f"{needed_bytes} bytes needed{free_text}"
        super().__init__(f"disk full: could not write {target} ({detail})")


def free_bytes(path: pathlib.Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing ancestor)."""
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def is_disk_full(error: BaseException) -> bool:
    """True when `error`, or an exception it was raised from, says there is no space left."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            return True
        if any(text in str(e) for text in NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def guard(path: str | os.PathLike, needed_bytes: int | None, *, what: str = "") -> Iterator[None]:
    """Turns a disk-full error raised inside the block into DiskFullError(path, needed)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFullError(path, needed_bytes, what=what) from e
        raise


def write_whole(fd: int, data: bytes, path: str | os.PathLike) -> None:
    """Appends `data` to the open file `fd` and fsyncs it, or leaves the file as it was.

    On any write error the file is truncated back to its length before the call (freeing
    space always works), so a JSON-lines file never keeps a torn line."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        os.ftruncate(fd, size)
        if is_disk_full(e):
            raise DiskFullError(path, len(data)) from e
        raise


def append_whole(path: str | os.PathLike, data: bytes) -> None:
    """Opens `path` for appending, writes `data` whole (see write_whole) and closes it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_whole(fd, data, path)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Replaces `path` with `data` through a fsynced temporary file and a rename, so the file
    is either the old or the new version; a full disk leaves the old one and no temporary."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(path, len(data)) from e
        raise
    return path
