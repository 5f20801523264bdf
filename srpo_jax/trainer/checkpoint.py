"""Checkpoints: the whole train-state pytree (orbax) plus a JSON record of host state.

One checkpoint = one orbax step directory holding two items, finalised together:
  "state": every array leaf of the train state (params, EMA teacher, optimizer state, step,
           rng; sharded or not), stored as a nested dict keyed by the leaf's tree path, so any
           pytree (nnx.State, optax states, dataclasses) round-trips through its own treedef;
  "host":  JSON: the caller's host state (data cursor, seeds, step, rollout weight version,
           resolved config, metrics history) plus the saved tree's leaf paths/shapes/dtypes.

Atomicity: orbax writes into a temporary directory and renames it on finalisation, and the
manager lists only finalised steps, so a run killed mid-write leaves nothing that `restore`
would pick up (tests/trainer/test_checkpoint.py kills a writer to check). A finalised
checkpoint that cannot be read (disk damage, files removed) is skipped with a warning
naming it, and the previous one is used. A checkpoint of a different model shape is never
silently loaded: `CheckpointMismatchError` names the first differing leaf paths and their shapes.

A full disk. A save that runs out of space (found when it finishes: at the next `save`,
`wait` or `close`) raises disk.DiskFullError naming the checkpoint's directory and the
bytes it needed (the train state's size in memory plus its JSON record; orbax compresses,
so the files may take less), and the last complete checkpoint. The failed step's partial
directory is removed, so the previous checkpoint stays the latest and the space is
returned. orbax's own error logs of that failure (tracebacks from its writer threads) are
dropped, and so are the "Event loop is closed" tracebacks its abandoned writes print; its
writer threads still running are waited for, so none fails later at exit. The one
DiskFullError line says it all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from srpo_jax import disk
from srpo_jax.trainer.config import CheckpointConfig  # noqa: F401

log = logging.getLogger(__name__)

_STATE, _HOST, _TREE = "state", "host", "_tree"


class CheckpointMismatchError(ValueError):
    """The checkpoint's tree does not match the target (different model shape or layout)."""


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    state: Any  # the train-state pytree, leaves placed with the target's shardings
    host_state: dict  # what the caller passed to save(), without the tree record


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `state`: the restore target."""

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(one, state)


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _path_parts(path) -> list[str]:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:  # pragma: no cover - every jax key-path entry has one of the three
            parts.append(str(entry))
    return parts


def _flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = ["/".join(_path_parts(p)) for p, _ in leaves_with_path]
    if len(set(names)) != len(names):
        raise ValueError("train state has two leaves with the same path; cannot checkpoint it")
    return names, [leaf for _, leaf in leaves_with_path], treedef


def _nest(names: list[str], leaves: list[Any]) -> dict:
    """'a/b/0' -> {'a': {'b': {'0': leaf}}}: orbax stores nested dicts of arrays natively."""
    out: dict = {}
    for name, leaf in zip(names, leaves, strict=True):
        node = out
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def _unnest(tree: dict, names: list[str]) -> list[Any]:
    out = []
    for name in names:
        node = tree
        for p in name.split("/"):
            node = node[p]
        out.append(node)
    return out


def _describe(x: Any) -> list:
    return [list(np.shape(x)), str(x.dtype)]  # typed keys print as e.g. "key<fry>"


def _key_impl(x: Any):
    # Works for key arrays and for ShapeDtypeStructs of keys (jax.random.key_impl does not
    # accept the latter); the key dtype carries its implementation.
    return x.dtype._impl


class CheckpointManager:
    """Saves and restores (train state, host state) under `directory`, keeping the last `keep`.

    Call `save` from every process (orbax coordinates multi-host writes; JSON is written by
    the primary process). `wait()` blocks until an asynchronous save has been finalised.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        """read_only: only restores, and touches nothing in `directory` (an export or an
        evaluation reading a run that may still be training and writing its next step)."""
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            create=not read_only,
            # Leftovers of a killed write are never listed as steps; remove them at start-up.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
        )  # not orbax's own read_only: it logs a warning for every reader
        _quiet_disk_full_logs()
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _HOST)
        )
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight

    def save(self, step: int, state: Any, host_state: dict | None = None) -> None:
        """Writes checkpoint `step`; returns once the arrays are copied off device (async).

        Raises disk.DiskFullError if the previous save, or this one, ran out of space."""
        self.wait()  # orbax waits for the previous save anyway; its failure is reported first
        names, leaves, _ = _flatten(state)
        # Typed PRNG keys are stored as their raw uint32 data; the target says how to rewrap.
        stored = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
        record = dict(host_state or {})
        record[_TREE] = {"paths": names, "leaves": [_describe(x) for x in leaves]}
        nbytes = sum(int(np.prod(np.shape(x))) * x.dtype.itemsize for x in stored)
        self._pending = (step, nbytes + len(json.dumps(record)))
        with self._disk_full_guard():
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: ocp.args.StandardSave(_nest(names, stored)),
                        _HOST: ocp.args.JsonSave(record),
                    }
                ),
            )

    def wait(self) -> None:
        with self._disk_full_guard():
            self._manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _disk_full_guard(self):
        """A guard that, on a full disk, removes the pending step's partial directory and
        raises DiskFullError naming it, its bytes and the last complete checkpoint."""
        step, nbytes = self._pending if self._pending is not None else (None, None)
        return _CheckpointDiskFull(self, step, nbytes)

    def _disk_full_error(self, step: int | None, nbytes: int | None) -> disk.DiskFullError:
        self._pending = None
        _join_orbax_writers()
        if step is not None and jax.process_index() == 0:
            _remove_partial(self.directory, step)  # give the space back
        try:
            complete = self.all_steps()
        except Exception:  # listing can fail on a broken disk too; the message still stands
            complete = []
        last = f"step {complete[-1]}" if complete else "none"
        label = f"checkpoint step {step}" if step is not None else "checkpoint"
        target = self.directory / str(step) if step is not None else self.directory
        error = disk.DiskFullError(target, nbytes, what=label)
        error.args = (
            f"{error}; the last complete checkpoint: {last}. Free space and rerun the same "
            "command to resume from it",
        )
        return error

    def all_steps(self) -> list[int]:
        """Finalised checkpoint steps, oldest first (half-written ones never appear)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def read_host_state(self, step: int) -> dict:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_HOST: ocp.args.JsonRestore()})
        )
        return dict(restored[_HOST])

    def restore(
        self, target: Any, *, step: int | None = None, only: Sequence[str] = ()
    ) -> Restored | None:
        """Restores into `target` (arrays or ShapeDtypeStructs with shardings; see abstract_like).

        step=None: the latest finalised checkpoint, falling back to older ones (with a
        warning) when the latest cannot be read. Returns None when there is no checkpoint.
        Raises CheckpointMismatchError when the checkpoint's tree differs from the target
        (the whole tree is checked, `only` or not).

        only: top-level fields of the state (e.g. ("params",)) whose leaves alone are read;
        every other leaf comes back as None, so an export of one tree never holds the
        optimizer's moments in memory. Empty: every leaf.
        """
        self.wait()
        available = self.all_steps()
        if step is not None and step not in available:
            raise FileNotFoundError(f"no finalised checkpoint for step {step} in {self.directory}")
        steps = [step] if step is not None else available[::-1]
        names, targets, treedef = _flatten(target)
        wanted = [not only or name.split("/")[0] in only for name in names]
        # orbax skips reading a leaf whose target is its PLACEHOLDER (a PyTreeRestore only).
        abstract = _nest(
            names,
            [
                _stored_struct(x) if w else ocp.PLACEHOLDER
                for x, w in zip(targets, wanted, strict=True)
            ],
        )
        restore_args = (
            ocp.args.PyTreeRestore(abstract, ocp.checkpoint_utils.construct_restore_args(abstract))
            if only
            else ocp.args.StandardRestore(abstract)
        )
        for i, s in enumerate(steps):
            try:
                host = self.read_host_state(s)
                tree = host.pop(_TREE)
            except Exception as e:  # unreadable: truncated or missing JSON
                self._skip(s, e, steps[i + 1 :], explicit=step is not None)
                continue
            self._check_match(s, tree, names, targets)
            try:
                restored = self._manager.restore(
                    s, args=ocp.args.Composite(**{_STATE: restore_args})
                )
            except Exception as e:  # unreadable: damaged or missing array files
                self._skip(s, e, steps[i + 1 :], explicit=step is not None)
                continue
            values = _unnest(restored[_STATE], names)
            leaves = [
                (jax.random.wrap_key_data(v, impl=_key_impl(t)) if _is_key(t) else v) if w else None
                for v, t, w in zip(values, targets, wanted, strict=True)
            ]
            state = jax.tree_util.tree_unflatten(treedef, leaves)
            return Restored(step=s, state=state, host_state=host)
        return None

    def _skip(self, step: int, error: Exception, older: list[int], *, explicit: bool) -> None:
        if explicit:
            raise error
        then = (
            f"falling back to step {older[0]}" if older else "no older checkpoint to fall back to"
        )
        log.warning(
            "checkpoint step %d in %s is unreadable (%s: %s); %s",
            step, self.directory, type(error).__name__, error, then,
        )  # fmt: skip

    def _check_match(self, step: int, tree: dict, names: list[str], targets: list[Any]) -> None:
        saved = dict(zip(tree["paths"], tree["leaves"], strict=True))
        wanted = {n: _describe(x) for n, x in zip(names, targets, strict=True)}
        problems = []
        for name, (shape, dtype) in wanted.items():
            if name not in saved:
                problems.append(
                    f"leaf {name} {tuple(shape)} {dtype} is missing from the checkpoint"
                )
            elif saved[name] != [shape, dtype]:
                have_shape, have_dtype = saved[name]
                problems.append(
                    f"leaf {name} has shape {tuple(have_shape)} {have_dtype} in the checkpoint, "
                    f"expected {tuple(shape)} {dtype}"
                )
        problems += [f"checkpoint leaf {n} is not in the target" for n in saved if n not in wanted]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not match the train state "
                f"(different model shape?): " + "; ".join(problems[:5]) + more
            )


class _CheckpointDiskFull:
    """Context manager of CheckpointManager._disk_full_guard."""

    def __init__(self, manager: CheckpointManager, step: int | None, nbytes: int | None):
        self.manager, self.step, self.nbytes = manager, step, nbytes

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and disk.is_disk_full(error):
            raise self.manager._disk_full_error(self.step, self.nbytes) from error
        return False


class _DropDiskFullRecords(logging.Filter):
    """Drops orbax's error records (with their writer threads' tracebacks) of a write that
    ran out of space: CheckpointManager raises one DiskFullError line for it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            return not disk.is_disk_full(record.exc_info[1])
        return not any(text in record.getMessage() for text in disk.NO_SPACE_TEXT)


class _DropClosedLoopCallbacks:
    """sys.unraisablehook without the "Event loop is closed" reports of late callbacks.

    When one of orbax's parallel writes fails (a full disk), its event loop stops and
    closes; the writes still in flight in tensorstore then complete into that closed loop,
    and tensorstore reports each callback's RuntimeError as unraisable (a traceback on
    stderr). They carry nothing: the failure itself is raised to the caller. Every other
    unraisable exception goes to the previous hook."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        value, tb = unraisable.exc_value, unraisable.exc_traceback
        late_callback = (
            isinstance(value, RuntimeError)
            and str(value) == "Event loop is closed"
            and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(tb))
        )
        if not late_callback:
            self.previous(unraisable)


def _quiet_disk_full_logs() -> None:
    # orbax logs through absl's logger, asyncio its never-retrieved task errors through its
    # own; a filter on each sees every one of their records.
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropDiskFullRecords) for f in logger.filters):
            logger.addFilter(_DropDiskFullRecords())
    if not isinstance(sys.unraisablehook, _DropClosedLoopCallbacks):
        sys.unraisablehook = _DropClosedLoopCallbacks(sys.unraisablehook)


def _remove_partial(directory: pathlib.Path, step: int, timeout_s: float = 30.0) -> None:
    """Removes step's partial (orbax tmp) directories, retrying until none is left.

    tensorstore's native writer threads are invisible to `_join_orbax_writers`; one still
    finishing its failed chunk can create a file while rmtree walks the directory, which then
    stays (seen once under load). Those writes fail fast on the full disk, so a few retries
    see the directory gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        partials = list(directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        if not partials or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _join_orbax_writers(timeout_s: float = 120.0) -> None:
    """Waits for orbax's writer threads that are still running when one of them failed.

    orbax reports the first failed write while the others go on; left running, they would
    race the removal of the partial directory and, at exit, fail with tracebacks of their
    own ("cannot schedule new futures after interpreter shutdown")."""
    deadline = time.monotonic() + timeout_s
    for t in threading.enumerate():
        if t is not threading.current_thread() and type(t).__module__.startswith("orbax."):
            # orbax's threads re-raise their error on join: already known, not raised again.
            with contextlib.suppress(Exception):
                t.join(max(0.0, deadline - time.monotonic()))


def _stored_struct(x: Any) -> jax.ShapeDtypeStruct:
    """What a target leaf is stored as: itself, or a typed key's raw uint32 data."""
    sharding = getattr(x, "sharding", None)
    if not _is_key(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if isinstance(sharding, jax.sharding.NamedSharding):
        # The key's spec plus a replicated trailing dimension for the key words.
        spec = tuple(sharding.spec) + (None,) * (data.ndim - len(sharding.spec))
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    elif sharding is not None and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = None  # unknown layout: let orbax choose
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
