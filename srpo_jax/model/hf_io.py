"""HF safetensors <-> Qwen3 parameters: streaming sharded load, sharded save.

Loading reads tensor by tensor with safetensors' lazy slices and builds every parameter
with jax.make_array_from_callback, so each device receives only its shard and no process
ever holds an unsharded copy of a large parameter; stacked layer parameters [L, ...] are
assembled from the per-layer HF tensors. Saving writes transformers' names and layouts
(Linear weights are [out, in]), config.json and model.safetensors.index.json, one shard
file at a time, fetching one layer's tensor at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
from flax import nnx
from jax.sharding import SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from srpo_jax.model.config import Qwen3Config, read_hf_config
from srpo_jax.model.qwen3 import Qwen3
from srpo_jax.sharding import param_shardings

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DEFAULT_MAX_SHARD_BYTES = 4 * 2**30


class HFCheckpointError(ValueError):
    """An HF directory cannot be loaded (missing file or tensor, wrong shape); names it."""


@dataclasses.dataclass(frozen=True)
class _TensorMap:
    """One parameter <-> HF tensor(s): ours_layer = reshape(hf.T if transpose else hf).

    `split` is where our per-layer dims divide into the HF matrix's (rows, cols) view, e.g.
    q_proj [D, N, H] views as [D, N*H] (split 1), o_proj [N, H, D] as [N*H, D] (split 2)."""

    ours: str  # attribute path in Qwen3, e.g. "layers.q_proj"
    hf: str  # HF name; "{l}" is the layer index for stacked parameters
    transpose: bool = False
    split: int = 1

    @property
    def stacked(self) -> bool:
        return "{l}" in self.hf

    def view_shape(self, layer_shape) -> tuple[int, ...]:
        if len(layer_shape) == 1:
            return tuple(layer_shape)
        return (math.prod(layer_shape[: self.split]), math.prod(layer_shape[self.split :]))

    def hf_shape(self, layer_shape) -> tuple[int, ...]:
        view = self.view_shape(layer_shape)
        return view[::-1] if self.transpose else view


_L = "model.layers.{l}."
_MAPS = (
    _TensorMap("embed", "model.embed_tokens.weight"),
    _TensorMap("layers.attn_norm", _L + "input_layernorm.weight"),
    _TensorMap("layers.q_proj", _L + "self_attn.q_proj.weight", transpose=True),
    _TensorMap("layers.k_proj", _L + "self_attn.k_proj.weight", transpose=True),
    _TensorMap("layers.v_proj", _L + "self_attn.v_proj.weight", transpose=True),
    _TensorMap("layers.o_proj", _L + "self_attn.o_proj.weight", transpose=True, split=2),
    _TensorMap("layers.q_norm", _L + "self_attn.q_norm.weight"),
    _TensorMap("layers.k_norm", _L + "self_attn.k_norm.weight"),
    _TensorMap("layers.mlp_norm", _L + "post_attention_layernorm.weight"),
    _TensorMap("layers.gate_proj", _L + "mlp.gate_proj.weight", transpose=True),
    _TensorMap("layers.up_proj", _L + "mlp.up_proj.weight", transpose=True),
    _TensorMap("layers.down_proj", _L + "mlp.down_proj.weight", transpose=True),
    _TensorMap("final_norm", "model.norm.weight"),
    _TensorMap("lm_head", "lm_head.weight", transpose=True),
)


def _maps_for(config: Qwen3Config) -> tuple[_TensorMap, ...]:
    return tuple(m for m in _MAPS if not (m.ours == "lm_head" and config.tie_embeddings))


# ----- loading --------------------------------------------------------------------------
def _open(file: pathlib.Path):
    """safe_open, but a truncated or foreign file is an HFCheckpointError naming it."""
    try:
        return safe_open(file, "np")
    except safetensors.SafetensorError as e:
        raise HFCheckpointError(f"{file} is not a readable safetensors file: {e}") from None


class _Checkpoint:
    """Name -> file lookup over a single-file or sharded checkpoint, with lazy file handles."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        index = path / INDEX_FILE
        if index.is_file():
            try:
                self.weight_map = dict(json.loads(index.read_bytes().decode())["weight_map"])
            except (ValueError, KeyError, TypeError) as e:  # not JSON, or no weight_map
                raise HFCheckpointError(f"{index}: not a safetensors index ({e!r:.80})") from None
        elif (path / SINGLE_FILE).is_file():
            with _open(path / SINGLE_FILE) as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise HFCheckpointError(f"{path} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
        self._handles: dict[str, Any] = {}

    def slice(self, name: str):
        if name not in self.weight_map:
            raise HFCheckpointError(f"checkpoint tensor {name!r} is missing from {self.path}")
        file = self.weight_map[name]
        if file not in self._handles:
            if not (self.path / file).is_file():
                raise HFCheckpointError(
                    f"checkpoint tensor {name!r}: file {self.path / file} does not exist"
                )
            self._handles[file] = _open(self.path / file)
        return self._handles[file].get_slice(name)

    def check(self, name: str, expected: tuple[int, ...]) -> None:
        found = tuple(self.slice(name).get_shape())
        if found != tuple(expected):
            raise HFCheckpointError(
                f"checkpoint tensor {name!r} in {self.path / self.weight_map[name]} has shape "
                f"{found}, expected {tuple(expected)}"
            )


def _norm_index(index, shape) -> tuple[tuple[int, int], ...]:
    out = []
    for s, n in zip(index, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"strided shard index {s} is not supported")
        out.append((start, stop))
    return tuple(out)


def _read_box(tm: _TensorMap, hf_slice, layer_shape, box) -> np.ndarray:
    """Reads the part of one HF tensor that our per-layer box [(start, stop)...] needs.

    Each view axis groups several of our dims; we read the range of its leading dim with the
    trailing dims whole (contiguous in the flat HF axis), then cut the trailing dims."""
    groups = [range(len(layer_shape))] if len(layer_shape) == 1 else None
    if groups is None:
        groups = [range(0, tm.split), range(tm.split, len(layer_shape))]
    view_ranges = []
    for g in groups:
        lead = g[0]
        rest = math.prod(layer_shape[d] for d in g[1:])
        view_ranges.append(slice(box[lead][0] * rest, box[lead][1] * rest))
    if tm.transpose:
        block = np.asarray(hf_slice[tuple(view_ranges[::-1])]).T
    else:
        block = np.asarray(hf_slice[tuple(view_ranges)])
    lead_sizes = [box[g[0]][1] - box[g[0]][0] for g in groups]
    full = []
    for g, lead_n in zip(groups, lead_sizes, strict=True):
        full.extend([lead_n, *(layer_shape[d] for d in g[1:])])
    block = block.reshape(full)
    cut = tuple(
        slice(0, b - a) if d in (g[0] for g in groups) else slice(a, b)
        for d, (a, b) in enumerate(box)
    )
    return block[cut]


def _load_param(ckpt: _Checkpoint, tm: _TensorMap, shape, sharding, dtype) -> jax.Array:
    layer_shape = shape[1:] if tm.stacked else shape
    cache: dict[tuple, np.ndarray] = {}  # replicated shards ask for the same box: read once

    def callback(index):
        box = _norm_index(index, shape)
        if box not in cache:
            if tm.stacked:
                (l0, l1), rest = box[0], box[1:]
                parts = [
                    _read_box(tm, ckpt.slice(tm.hf.format(l=i)), layer_shape, rest)
                    for i in range(l0, l1)
                ]
                block = np.stack(parts) if parts else np.zeros((0, *(b - a for a, b in rest)))
            else:
                block = _read_box(tm, ckpt.slice(tm.hf), layer_shape, box)
            cache[box] = np.ascontiguousarray(block.astype(dtype))
        return cache[box]

    return jax.make_array_from_callback(tuple(shape), sharding, callback)


def _variable(model: Qwen3, dotted: str) -> nnx.Variable:
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_hf(
    path,
    *,
    config: Qwen3Config | None = None,
    config_overrides: dict[str, Any] | None = None,
    mesh=None,
) -> Qwen3:
    """A Qwen3 with weights from an HF directory (config.json + model.safetensors or sharded
    model-*.safetensors with model.safetensors.index.json). With `mesh`, each parameter is
    placed straight onto its shards per the rules table; without, onto the first device.

    `config` is the architecture the caller already resolved (the trainer passes the run's
    model config, so remat, dtype and the attention settings reach the model); without it,
    config.json plus `config_overrides` decides. The safetensors shapes are checked against
    whichever config is used."""
    path = pathlib.Path(path)
    if config is not None and config_overrides:
        raise ValueError("load_hf takes either config or config_overrides, not both")
    if config is None:
        try:
            config = read_hf_config(path, **(config_overrides or {}))
        except FileNotFoundError as e:
            raise HFCheckpointError(f"{e} does not exist") from None
    model = nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0)))
    if mesh is not None:
        shardings = param_shardings(mesh, nnx.state(model, nnx.Param))
    ckpt = _Checkpoint(path)
    maps = _maps_for(config)
    for tm in maps:  # validate everything before reading any data
        shape = _variable(model, tm.ours).get_value().shape
        layers = range(config.num_layers) if tm.stacked else [None]
        for i in layers:
            layer_shape = shape[1:] if tm.stacked else shape
            ckpt.check(tm.hf.format(l=i), tm.hf_shape(layer_shape))
    dtype = config.params_dtype
    for tm in maps:
        var = _variable(model, tm.ours)
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = _lookup(shardings, tm.ours)
        var.set_value(_load_param(ckpt, tm, var.get_value().shape, sharding, dtype))
    return model


def _lookup(tree, dotted: str):
    obj = tree
    for part in dotted.split("."):
        obj = obj[part]
    return obj


# ----- saving ---------------------------------------------------------------------------
def _params_dict(params_state) -> dict[str, Any]:
    if isinstance(params_state, nnx.State):
        return nnx.to_pure_dict(params_state)
    return params_state


def _fetch(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def hf_layout(tm: _TensorMap, x, dtype) -> jax.Array:
    """One layer of our parameter (`x`) as its HF tensor: reshape, transpose, cast in one
    XLA computation. Jitted so the transpose and the cast fuse into one pass that XLA
    tiles, on the CPU several times faster than a strided copy in torch or numpy (and in
    HBM on a GPU); the bytes are the same either way (round to nearest even)."""
    x = jnp.reshape(x, tm.view_shape(x.shape))
    x = x.T if tm.transpose else x
    return x.astype(dtype)


def _hf_device(tm: _TensorMap, array, layer: int | None, dtype) -> jax.Array:
    """One HF tensor from our (stacked) parameter, transformed on device."""
    return hf_layout(tm, array[layer] if layer is not None else array, jnp.dtype(dtype))


def _hf_tensor(tm: _TensorMap, array, layer: int | None, dtype) -> np.ndarray:
    """One HF tensor from our (stacked) parameter, transformed on device, then fetched."""
    return _fetch(_hf_device(tm, array, layer, dtype))


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One tensor of the HF checkpoint: its name, shape and where it comes from."""

    name: str
    shape: tuple[int, ...]
    source: _TensorMap
    layer: int | None  # the layer of a stacked parameter, None for the others


def hf_tensors(params_state, config: Qwen3Config) -> list[HFTensor]:
    """The tensors save_hf_params writes, in its order (the distributed weight sync sends
    exactly these); fetch each with `hf_array`."""
    params = _params_dict(params_state)
    out = []
    for tm in _maps_for(config):
        shape = _lookup(params, tm.ours).shape
        if tm.stacked:
            hf_shape = tm.hf_shape(shape[1:])
            out.extend(
                HFTensor(tm.hf.format(l=i), hf_shape, tm, i) for i in range(config.num_layers)
            )
        else:
            out.append(HFTensor(tm.hf, tm.hf_shape(shape), tm, None))
    return out


def hf_array(params_state, tensor: HFTensor, dtype, *, on_device: bool = False):
    """One HF tensor cast to `dtype`: a host numpy array (collective in multi-process runs:
    every process must call it, in the same order), or with `on_device` the jax array
    where it was computed (single process only)."""
    params = _params_dict(params_state)
    src = _lookup(params, tensor.source.ours)
    if on_device:
        return _hf_device(tensor.source, src, tensor.layer, dtype)
    return _hf_tensor(tensor.source, src, tensor.layer, dtype)


def hf_source(params_state, tensor: HFTensor):
    """Our parameter behind `tensor` as stored (a stacked parameter whole, every layer):
    for a caller that lays the HF tensor out itself from a host view, without a copy."""
    return _lookup(_params_dict(params_state), tensor.source.ours)


def save_hf_params(
    params_state,
    config: Qwen3Config,
    path,
    dtype: str | None = "bfloat16",
    *,
    max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Writes params (nnx.State of nnx.Param, or its pure dict) as an HF Qwen3 checkpoint.

    dtype None keeps the parameter dtype. In multi-process runs every process must call this
    (non-addressable arrays are all-gathered); only process 0 writes."""
    params = _params_dict(params_state)
    dtype = jnp.dtype(config.param_dtype if dtype is None else dtype)
    path = pathlib.Path(path)
    writer = jax.process_index() == 0
    entries = []  # (hf name, map, layer)
    for tm in _maps_for(config):
        if tm.stacked:
            entries.extend((tm.hf.format(l=i), tm, i) for i in range(config.num_layers))
        else:
            entries.append((tm.hf, tm, None))
    shards: list[list] = [[]]
    shard_bytes = 0
    for entry in entries:
        arr = _lookup(params, entry[1].ours)
        n = math.prod(arr.shape[1:] if entry[2] is not None else arr.shape) * dtype.itemsize
        if shards[-1] and shard_bytes + n > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(entry)
        shard_bytes += n
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("model*.safetensors*"):  # a previous save's other layout
            stale.unlink()
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    for file, shard in zip(names, shards, strict=True):
        tensors = {}
        for hf_name, tm, layer in shard:
            tensors[hf_name] = _hf_tensor(tm, _lookup(params, tm.ours), layer, dtype)
            weight_map[hf_name] = file
            total += tensors[hf_name].nbytes
        if writer:
            save_file(tensors, os.fspath(path / file), metadata={"format": "pt"})
        del tensors
    if writer:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2))
        hf_config = config.to_hf_dict(torch_dtype=str(dtype.name))
        (path / "config.json").write_text(json.dumps(hf_config, indent=2))


def save_hf(
    model: Qwen3, path, *, dtype: str | None = None, max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES
) -> None:
    """Writes `model` as an HF checkpoint loadable by AutoModelForCausalLM.from_pretrained.
    dtype None keeps the parameter dtype (a load_hf -> save_hf round trip is bit-exact)."""
    save_hf_params(
        nnx.state(model, nnx.Param), model.config, path, dtype, max_shard_bytes=max_shard_bytes
    )
