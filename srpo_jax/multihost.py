"""Moving host data between the processes of a multi-process (multi-host) run.

Every process runs the same training loop (SPMD), so every host-side value a jitted call
consumes must be identical on all processes. Three primitives keep it so:

- `to_host`: a device array -> numpy on every process, gathering the shards other
  processes hold (a sampled batch sharded over the data axes, per-token metrics).
- `replicated`: a host numpy array that every process holds in full -> a global array
  replicated over a mesh (jit refuses numpy next to arrays that span several processes).
- `broadcast_from_leader`: numpy arrays that only process 0 has (the answer of an SGLang
  server pool, which only process 0 talks to) -> the same arrays on every process.

With one process each is a plain device_get / device_put / identity.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_leader() -> bool:
    """Process 0: the one that writes files, prints and talks to rollout servers."""
    return jax.process_index() == 0


def to_host(x) -> np.ndarray:
    """The whole value of `x` as numpy, on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:  # every process already holds all of it
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def tree_to_host(tree):
    """`to_host` of every leaf. When this process holds every leaf whole, one batched
    device_get: all copies start before the first wait, instead of one sync per leaf."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return jax.tree.map(to_host, tree)


def replicated(x: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    """`x` (the same on every process) as an array replicated over `mesh`."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def broadcast_from_leader(arrays: dict[str, np.ndarray] | None, spec: dict[str, tuple]):
    """Process 0's `arrays` on every process.

    `spec` maps each name to (ndim, dtype); other processes pass arrays=None. Shapes travel
    first (they differ from step to step), then the data. Every process must call this the
    same number of times, in the same order.
    """
    if jax.process_count() == 1:
        return arrays
    names = sorted(spec)
    shapes = np.zeros((len(names), max(n for n, _ in spec.values()) or 1), np.int64)
    if is_leader():
        for i, k in enumerate(names):
            shapes[i, : arrays[k].ndim] = arrays[k].shape
    shapes = np.asarray(multihost_utils.broadcast_one_to_all(shapes))
    payload = {}
    for i, k in enumerate(names):
        ndim, dtype = spec[k]
        shape = tuple(int(s) for s in shapes[i, :ndim])
        payload[k] = (
            np.asarray(arrays[k], dtype).reshape(shape) if is_leader() else np.zeros(shape, dtype)
        )
    return {k: np.asarray(v) for k, v in multihost_utils.broadcast_one_to_all(payload).items()}
