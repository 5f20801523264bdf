"""The distributed weight sync's gather (weight_buckets.payloads + Prefetch), without a
receiver: every payload holds save_hf_params' bytes while it is alive, even as the gather
runs ahead (flattened: into the one reused buffer of the largest bucket).

The reference is the disk route's own export (safetensors written by save_hf_params)."""

from __future__ import annotations

import time

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from srpo_jax.model import Qwen3, save_hf_params, tiny
from srpo_jax.model.hf_io import hf_source, hf_tensors
from srpo_jax.rollout.weight_buckets import Prefetch, make_buckets, payloads

torch = pytest.importorskip("torch")


def _bytes(x) -> bytes:
    return x.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request, tmp_path_factory):
    """(config, params, {HF name: bf16 bytes} from save_hf_params) for each param dtype:
    fp32 params are cast by the gather, bf16 ones are sent from their own memory where the
    HF layout needs no transpose."""
    cfg = tiny(vocab_size=160, param_dtype=request.param)
    params = nnx.state(Qwen3(cfg, rngs=nnx.Rngs(3)), nnx.Param)
    path = tmp_path_factory.mktemp(request.param)
    save_hf_params(params, cfg, path, dtype="bfloat16")
    want = {}
    for f in sorted(path.glob("*.safetensors")):
        want.update({k: v.tobytes() for k, v in load_file(f).items()})
    # The export and the gather share hf_io.hf_layout; both are held to plain NumPy here
    # (ml_dtypes rounds to nearest even, independently of XLA).
    for t in hf_tensors(params, cfg):
        x = np.asarray(hf_source(params, t))
        x = x[t.layer] if t.layer is not None else x
        x = x.reshape(t.source.view_shape(x.shape))
        x = x.T if t.source.transpose else x
        assert np.ascontiguousarray(x).astype(ml_dtypes.bfloat16).tobytes() == want[t.name], t.name
    return cfg, params, want


@pytest.mark.parametrize("flatten", [False, True])
def test_payloads_keep_their_bytes_until_done_while_the_gather_runs_ahead(model, flatten):
    cfg, params, want = model
    tensors = hf_tensors(params, cfg)
    # 6 KiB buckets: every matrix (8-20 KiB) grows a bucket of its own, the ring is the
    # embedding's 20 KiB, and per tensor it wraps often (a 16 KiB payload waits for the one
    # before it).
    buckets = make_buckets(tensors, 2, 6 * 1024)
    expected = (
        [b"".join(want[t.name] for t in b.tensors) for b in buckets]
        if flatten
        else [want[t.name] for t in tensors]
    )
    produce, done = payloads(params, buckets, jnp.bfloat16, flatten=flatten, on_device=False)
    ring = done.__self__.buffer  # the ring's one buffer (done is its bound `release`)
    lo, hi = ring.data_ptr(), ring.data_ptr() + ring.numel()
    stream = Prefetch(produce, slots=2, on_done=done)
    got, outside = [], 0
    for i in range(len(expected)):
        item = stream.get()
        time.sleep(0.01)  # the gather runs ahead into the ring meanwhile (its slot is free)
        assert _bytes(item) == expected[i], f"payload {i} overwritten before it was done"
        got.append(_bytes(item))
        outside += not (lo <= item.data_ptr() < hi)
        del item
        stream.done()
    with pytest.raises(StopIteration):
        stream.get()
    assert got == expected
    if flatten:  # every bucket in the one buffer of the largest bucket
        assert ring.numel() == max(b.nbytes for b in buckets)
        assert outside == 0
    elif cfg.param_dtype == "bfloat16":  # transposes copied into that buffer, the others
        assert ring.numel() == max(b.nbytes for b in buckets)  # are the params' own memory
        assert outside == sum(not t.source.transpose for t in tensors)
    else:  # fp32 per tensor: each payload is XLA's output (two alive at most), no buffer
        assert ring.numel() == 0


def test_a_failed_gather_reaches_the_consumer():
    def produce():
        yield torch.zeros(1)
        raise ValueError("gather broke")

    stream = Prefetch(produce(), slots=2, on_done=lambda: None)
    stream.get()
    stream.done()
    with pytest.raises(ValueError, match="gather broke"):
        stream.get()
