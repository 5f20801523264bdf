"""The folder of exported weights that SGLang servers load from.

Each weight version is an HF checkpoint at `root/step_<version>`; only the newest `keep`
are kept. `write` exports one (replacing a leftover folder of the same version) and `prune`
drops the oldest, called after the servers took the new one so that a failed push leaves
the served checkpoint in place.

In a multi-process learner the export is collective (every process gathers, process 0
writes): every process writes through its own WeightExports with `writer` True on process 0
only (one writer, one deleter) and `barrier` meeting the other processes before and after
the export. An empty root means a fresh temporary folder, removed by `close`.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any


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
        """Exports `params` as `version` and returns its folder (complete on every process)."""
        path = self.path(version)
        if self._writer and path.exists():
            shutil.rmtree(path)
        self._barrier(f"export {path} cleared")
        self._exporter(params, path)
        self._barrier(f"export {path} written")
        self._written.append(path)
        return path

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
