"""The weight sync's host pass alone: every HF tensor that needs a transpose or a cast, by
torch's strided copy of a transposed view (the gather before hf_io.hf_layout), torch casting
first then transposing, and XLA's hf_layout (its output as it is, or copied into a buffer).

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        python benchmarks/bench_hf_layout.py qwen3_1p7b bfloat16

Random weights of the preset's shapes in the given param dtype; one thread each (torch's
set_num_threads(1), XLA by the flags above); prints the best of 2 passes after a warm-up
pass (the jit compiles), and a single-thread memcpy of 512 MiB for the box's bandwidth.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_weight_sync import _random_params, _rss_mib  # noqa: E402

from srpo_jax.model import hf_io  # noqa: E402
from srpo_jax.rollout.weight_buckets import host_to_torch  # noqa: E402

BF16 = jnp.dtype("bfloat16")


def _torch_view(params, t):
    """The old gather's source: a torch view of the layer in the HF layout (no copy)."""
    x = host_to_torch(np.asarray(hf_io.hf_source(params, t)))
    x = x[t.layer] if t.layer is not None else x
    x = x.reshape(t.source.view_shape(tuple(x.shape)))
    return x.t() if t.source.transpose else x


def _needs_pass(params, t) -> bool:
    return t.source.transpose or hf_io.hf_source(params, t).dtype != BF16


def main() -> None:
    torch.set_num_threads(1)
    preset, param_dtype = sys.argv[1], sys.argv[2]
    cfg, params = _random_params(preset, param_dtype)
    tensors = [t for t in hf_io.hf_tensors(params, cfg) if _needs_pass(params, t)]
    biggest = max(int(np.prod(t.shape)) * 2 for t in tensors)
    ring = torch.empty(biggest, dtype=torch.uint8)
    tmp = torch.empty(biggest // 2, dtype=torch.bfloat16)
    a = torch.ones(2**29, dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = time.perf_counter()
    b.copy_(a)
    print(f"memcpy, 1 thread: {a.numel() / (time.perf_counter() - t0) / 1e9:.2f} GB/s")
    del a, b

    def out_for(t):
        return ring[: int(np.prod(t.shape)) * 2].view(torch.bfloat16).view(t.shape)

    def torch_copy():
        for t in tensors:
            out_for(t).copy_(_torch_view(params, t))

    def torch_cast_then_transpose():
        for t in tensors:
            src = _torch_view(params, t)
            if src.dtype != torch.bfloat16:  # cast contiguously first, then transpose
                transposed = not src.is_contiguous()
                base = src.t() if transposed else src
                cast = tmp[: src.numel()].view(base.shape)
                cast.copy_(base)
                src = cast.t() if transposed else cast
            out_for(t).copy_(src)

    def xla(copy: bool):
        for t in tensors:
            x = np.asarray(hf_io.hf_source(params, t))
            x = x[t.layer] if t.layer is not None else x
            y = np.asarray(hf_io.hf_layout(t.source, x, BF16))
            if copy:
                np.copyto(ring[: y.nbytes].numpy(), y.reshape(-1).view(np.uint8))
            del y

    nbytes = sum(int(np.prod(t.shape)) * 2 for t in tensors)
    for name, run in [
        ("torch copy_ of the transposed view", torch_copy),
        ("torch, cast then transpose", torch_cast_then_transpose),
        ("XLA hf_layout", lambda: xla(False)),
        ("XLA hf_layout, then copied into a buffer", lambda: xla(True)),
    ]:
        run()  # warm-up: the jit compiles
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(
            f"{preset} {param_dtype} {name}: {nbytes / 1e9:.2f} GB, best {best:.2f} s "
            f"({nbytes / best / 1e9:.2f} GB/s), RSS {_rss_mib('VmRSS'):.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
