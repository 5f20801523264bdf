"""Which mesh axes the tokens of a per-token vocabulary kernel split over, if any.

A chunked loop over tokens (lax.scan over [n_chunks, chunk] blocks) is not partitioned by
the SPMD partitioner along the tokens: given tokens sharded over data x fsdp it gathers
them and every device runs the whole loop, the same logits and the same unembedding
gradient on every device. Under a mesh whose axes other than data and fsdp have size 1 (the
vocabulary is whole on each device) the kernels therefore run inside shard_map: each
device loops over its own tokens and the unembedding's gradient is summed once at the end
(shard_map's transpose of a replicated input). A vocabulary split over `tensor` stays with
the partitioner, which then splits each chunk's logits over the vocabulary instead.
"""

from __future__ import annotations

import jax

TOKEN_AXES = ("data", "fsdp")


def token_shard_axes(n_tokens: int) -> tuple[jax.sharding.AbstractMesh | None, tuple[str, ...]]:
    """(mesh, axes) to shard_map n_tokens over, or (None, ()) to run as is: no mesh, already
    inside shard_map, a vocabulary split over another axis, no token axis larger than 1, or
    n_tokens not dividing evenly over the token axes."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or jax.sharding.AxisType.Manual in mesh.axis_types:
        return None, ()
    if any(mesh.shape[a] > 1 for a in mesh.axis_names if a not in TOKEN_AXES):
        return None, ()
    axes = tuple(a for a in TOKEN_AXES if mesh.shape.get(a, 1) > 1)
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    return (mesh, axes) if axes and n_tokens % shards == 0 else (None, ())
