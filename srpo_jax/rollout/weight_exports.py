"""The folder of exported weights that SGLang servers load from.

Each weight version is an HF checkpoint at `root/step_<version>`; only the newest `keep`
are kept. `write` exports one (replacing a leftover folder of the same version) and `prune`
drops the oldest, called after the servers took the new one so that a failed push leaves
the served checkpoint in place.

An export is written whole or not at all: into `step_<version>.partial`, renamed to
`step_<version>` once complete, so a server (or a person) never finds a half-written
`step_*` to load. A write that runs out of space removes the partial folder and raises
disk.DiskFullError naming the export's path and the bytes it needed (the size of the last
complete export here: same model, same dtype, same files), which `python -m srpo_jax.main`
prints as one `error:` line with exit 1; the served export and the checkpoints stay as they
were, and rerunning the command once space is freed resumes from the last checkpoint.

In a multi-process learner the export is collective (every process gathers, process 0
writes): every process writes through its own WeightExports with `writer` True on process 0
only (one writer, one deleter) and `barrier` meeting the other processes before and after
the export. An empty root means a fresh temporary folder, removed by `close`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from srpo_jax import disk


class WeightExports:
    """step_<version> HF checkpoints under one root, the newest `keep` kept."""

    def __init__(
        self,
        root: str | pathlib.Path | None,
        exporter: Callable[[Any, pathlib.Path], None],
        keep: int,
        *,
        writer: bool = True,
        barrier: Callable[[str], None] | None = None,
    ):
        self._tmp = None if root else tempfile.mkdtemp(prefix="srpo_sglang_")
        self.root = pathlib.Path(root or self._tmp)
        self._exporter = exporter
        self._keep = keep
        self._writer = writer
        self._barrier = barrier or (lambda name: None)
        self._written: list[pathlib.Path] = []

    def path(self, version: int) -> pathlib.Path:
        return self.root / f"step_{version:08d}"

    def write(self, params: Any, version: int) -> pathlib.Path:
        """Exports `params` as `version` and returns its folder (complete on every process).

        Raises disk.DiskFullError (nothing of this version left behind) if the disk fills."""
        path = self.path(version)
        partial = path.with_name(path.name + ".partial")
        if self._writer:
            for old in (path, partial):  # a leftover of an earlier run of this version
                if old.exists():
                    shutil.rmtree(old)
        self._barrier(f"export {path} cleared")
        try:
            self._exporter(params, partial)
            if self._writer:
                os.rename(partial, path)
        except Exception as e:
            if self._writer:
                shutil.rmtree(partial, ignore_errors=True)  # freeing space always works
            if disk.is_disk_full(e):
                raise self._disk_full(path, version) from e
            raise
        self._barrier(f"export {path} written")
        self._written.append(path)
        return path

    def _disk_full(self, path: pathlib.Path, version: int) -> disk.DiskFullError:
        last = next((p for p in reversed(self._written) if p.is_dir()), None)
        needed = sum(f.stat().st_size for f in last.iterdir() if f.is_file()) if last else None
        error = disk.DiskFullError(path, needed, what=f"the weight export of step {version}")
        served = f"{last.name} in {self.root}" if last else "none"
        error.args = (
            f"{error}; the last complete export: {served}. Free space and rerun the same "
            "command to resume from the last checkpoint",
        )
        return error

    def prune(self) -> None:
        """Removes all but the newest `keep` exports written here."""
        while len(self._written) > self._keep:
            old = self._written.pop(0)
            if self._writer:
                shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
