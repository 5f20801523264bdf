"""Benchmark the fused distillation loss: fwd+bwd time, peak temp memory, bandwidth vs floor.

    python benchmarks/bench_fused_loss.py --n 4096 --v 151936 --d 2560 --dtypes float32,bfloat16 \
        --impls reference,xla --compile-only      # memory only (CPU: the full run is too big)
    python benchmarks/bench_fused_loss.py --n 128 --d 512 --repeats 3   # timings
    python benchmarks/bench_fused_loss.py --d 4096 --dtypes bfloat16 --topology=h20x8,tpu-v5p-8
        # compiled temporaries from the real XLA:GPU / XLA:TPU compilers, no device ([aot])

Prints one markdown table: device, implementation, N, V, D, dtype, chunk, fwd+bwd median
time (value and gradient of the numerator wrt student hidden and unembedding), peak temp
bytes from compiled.memory_analysis(), and achieved bandwidth against the floor of reading
the student and teacher logits once (2 * N * V * itemsize(dtype) bytes / time). Pallas
implementations run only on their own platform (no interpret mode here).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import jax
import jax.numpy as jnp

from srpo_jax.kernels.fused_distill import api

PLATFORM_OF = {"pallas_gpu": "gpu", "pallas_tpu": "tpu"}


def build(impl, n, v, d, dtype, chunk, sharding=None):
    """Jitted value-and-grad of the numerator and abstract inputs for it.

    impl "xla" is the chunked XLA path with its default grad_mode="auto" (forward for fp32
    unembeddings, recompute for narrower); "xla_forward" and "xla_recompute" pin the mode.
    """
    kw = dict(implementation=impl)
    if impl in ("xla_forward", "xla_recompute"):
        kw = dict(implementation="xla", grad_mode=impl.removeprefix("xla_"))

    def loss(hs, ht, ws, wt, mask):
        def numerator(hs, ws):
            options = api.FusedDistillOptions(chunk_size=chunk, **kw)
            return api.fused_distill((hs, ht, ws, wt, mask), options).numerator

        return jax.value_and_grad(numerator, argnums=(0, 1))(hs, ws)

    def struct(shape, dt):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding)

    nd, dv = struct((n, d), dtype), struct((d, v), dtype)
    shapes = (nd, nd, dv, dv, struct((n,), jnp.float32))
    return jax.jit(loss), shapes


def make_inputs(shapes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    hs, ht, ws, wt, _ = (
        (jax.random.normal(k, s.shape, jnp.float32) * (0.05 if i >= 2 else 1.0)).astype(s.dtype)
        for i, (k, s) in enumerate(zip(keys, shapes, strict=True))
    )
    return hs, ht, ws, wt, jnp.ones(shapes[4].shape, jnp.float32)


def bench(impl, n, v, d, dtype_name, chunk, repeats, compile_only, sharding=None):
    dtype = jnp.dtype(dtype_name)
    fn, shapes = build(impl, n, v, d, dtype, chunk, sharding)
    compiled = fn.lower(*shapes).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    row = dict(impl=impl, n=n, v=v, d=d, dtype=dtype_name, chunk=chunk, temp=temp, t=None)
    if compile_only:
        return row
    args = make_inputs(shapes)
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    row["t"] = statistics.median(times)
    return row


def _compile_target(name):
    """(sharding on one compile-only device, platform, device kind) for a topology name."""
    from srpo_jax.aot import targets as aot
    from srpo_jax.aot import topologies

    try:
        device = aot.compile_devices(name)[0]
    except aot.AotUnavailable as e:
        aot.fail(f"--topology={name}: {e}")
    mesh = jax.sharding.Mesh([device], ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return sharding, topologies.get(name).platform, f"{device.device_kind} ({name}, AOT)"


def fmt_bytes(b):
    return "n/a" if b is None else f"{b / 2**30:.3f} GiB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--d", type=int, default=2560)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--impls", default="reference,xla,xla_recompute,pallas_gpu,pallas_tpu")
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile-only", action="store_true", help="memory analysis only")
    p.add_argument(
        "--topology",
        default="",
        help="comma-separated srpo_jax.aot.topologies names: compile-only on one of their "
        "devices with the real compiler (needs the [aot] extra; implies --compile-only)",
    )
    a = p.parse_args()
    targets = [(None, jax.default_backend(), jax.devices()[0].device_kind)]
    if a.topology:
        targets = [_compile_target(name) for name in a.topology.split(",")]
    print("| device | impl | N | V | D | dtype | chunk | fwd+bwd median | temp | vs floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sharding, backend, device in targets:
        for dtype_name, impl in itertools.product(a.dtypes.split(","), a.impls.split(",")):
            if PLATFORM_OF.get(impl, backend) != backend:
                continue  # a Pallas kernel for another platform
            compile_only = a.compile_only or sharding is not None
            r = bench(impl, a.n, a.v, a.d, dtype_name, a.chunk, a.repeats, compile_only, sharding)
            if r["t"] is None:
                t_s, bw = "not timed", "n/a"
            else:
                floor = 2 * a.n * a.v * jnp.dtype(dtype_name).itemsize
                t_s, bw = f"{r['t'] * 1e3:.1f} ms", f"{floor / r['t'] / 1e9:.2f} GB/s"
            print(
                f"| {device} | {impl} | {a.n} | {a.v} | {a.d} | {dtype_name} | {a.chunk} | "
                f"{t_s} | {fmt_bytes(r['temp'])} | {bw} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
