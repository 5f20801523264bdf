"""The checks to run the day a GPU or TPU is attached (scripts/accelerator_check.sh).

    python -m srpo_jax.accelerator_check --out=accelerator_report.json [--tiny]

Each check appends one entry to a single JSON report; nothing is downloaded (random
weights and inputs). On the accelerator, in this order, within a few minutes:

1. attention: the platform's fused kernel (cuDNN on GPU, splash on TPU) against the exact
   XLA path on left- and right-padded rows; max abs difference on valid rows.
2. fused distillation: the Pallas kernel's numerator and z against the float32 reference
   implementation, then its fwd+bwd time at N=4096, V=151936, D=2560 (bf16) against the
   HBM floor (reading the student and teacher logits once, at the chip's bandwidth).
3. model step: value, gradient and SGD update of a Qwen3-1.7B-shaped model (random weights,
   remat, bf16 compute) on 8 rows of 2048 tokens; step time, and the runtime's peak memory
   against what the compiler predicted for the same program (memory_analysis).

--tiny runs the same code at CPU-test size (the fused checks say "skipped" off-accelerator).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from srpo_jax.kernels.fused_distill import api
from srpo_jax.model import attention as attn
from srpo_jax.model.config import Qwen3Config
from srpo_jax.model.qwen3 import Qwen3


def _timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def check_attention(platform: str, tiny: bool) -> dict:
    impl = attn.resolve("auto", platform)
    if impl == "xla":
        return {"check": "attention", "status": "skipped", "why": f"no fused kernel on {platform}"}
    b, t, n, k, h = (2, 256, 4, 2, 128) if tiny else (4, 4096, 32, 8, 128)
    keys = jax.random.split(jax.random.key(0), 3)
    q, kk, v = (
        jax.random.normal(s, (b, t, m, h), jnp.bfloat16)
        for s, m in zip(keys, (n, k, k), strict=True)
    )
    valid = np.ones((b, t), bool)
    valid[1, : t // 4] = False  # left padding
    valid[-1, -t // 8 :] = False  # right padding
    mask = attn.CausalPadding(jnp.asarray(valid))
    ref = attn.attention(q, kk, v, mask, jnp.bfloat16, impl="xla", query_chunk=1024)
    got = attn.attention(q, kk, v, mask, jnp.bfloat16, impl=impl)
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref.astype(jnp.float32))[valid]))
    return {"check": "attention", "impl": impl, "max_abs_err": err, "status": _ok(err < 2e-2)}


def check_fused_distill(platform: str, tiny: bool, hbm_bytes_per_s: float | None) -> dict:
    impl = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(platform)
    if impl is None:
        return {"check": "fused_distill", "status": "skipped", "why": f"no kernel on {platform}"}
    n, v, d = (256, 1000, 64) if tiny else (4096, 151936, 2560)
    ks = jax.random.split(jax.random.key(1), 4)
    hs, ht = (jax.random.normal(s, (n, d), jnp.float32) for s in ks[:2])
    ws, wt = (0.05 * jax.random.normal(s, (d, v), jnp.float32) for s in ks[2:])
    mask = jnp.ones((n,), jnp.float32)
    small = (hs[:256], ht[:256], ws[:, :8192], wt[:, :8192], mask[:256])
    ref = api.fused_distill(*small, implementation="reference")
    got = api.fused_distill(*small, implementation=impl)
    rel = float(abs(got.numerator - ref.numerator) / max(abs(float(ref.numerator)), 1e-30))
    args = [x.astype(jnp.bfloat16) for x in (hs, ht, ws, wt)] + [mask]

    @jax.jit
    def step(hs, ht, ws, wt, mask):
        def num(hs, ws):
            return api.fused_distill(hs, ht, ws, wt, mask, implementation=impl).numerator

        return jax.value_and_grad(num, argnums=(0, 1))(hs, ws)

    seconds = _timed(step, *args)
    floor_s = 2 * n * v * 2 / hbm_bytes_per_s if hbm_bytes_per_s else None
    out = {"check": "fused_distill", "impl": impl, "numerator_rel_err": rel, "fwd_bwd_s": seconds}
    out.update(hbm_floor_s=floor_s, status=_ok(rel < 1e-3))
    return out


def check_model_step(tiny: bool) -> dict:
    if tiny:
        cfg, rows, t = Qwen3Config.tiny(), 2, 64
    else:
        cfg, rows, t = Qwen3Config.qwen3_1p7b(remat=True), 8, 2048
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids = jax.random.randint(jax.random.key(2), (rows, t), 0, cfg.vocab_size)

    @jax.jit
    def step(state, ids):
        def loss(state):
            logits = nnx.merge(graphdef, state)(ids[:, :-1])
            logp = jax.nn.log_softmax(logits, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

        value, grads = jax.value_and_grad(loss)(state)
        return value, jax.tree.map(lambda p, g: p - 1e-4 * g, state, grads)

    compiled = step.lower(state, ids).compile()
    mem = compiled.memory_analysis()
    predicted = None
    if mem is not None:
        predicted = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
    seconds = _timed(compiled, state, ids, repeats=2)
    stats = jax.devices()[0].memory_stats() or {}
    out = {"check": "model_step", "rows": rows, "tokens": t, "layers": cfg.num_layers}
    out.update(step_s=seconds, predicted_peak_bytes=predicted)
    out.update(peak_bytes=stats.get("peak_bytes_in_use"), status="ok")
    return out


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAILED"


def run(tiny: bool) -> list[dict]:
    from srpo_jax import chips

    platform = {"cuda": "gpu", "rocm": "gpu"}.get(jax.default_backend(), jax.default_backend())
    kind = jax.devices()[0].device_kind
    hbm = next(
        (c.hbm_bytes_per_s for c in chips.CHIPS.values() if c.gpu and c.gpu.description == kind),
        None,
    )
    header = {"check": "device", "platform": platform, "device_kind": kind, "status": "ok"}
    return [
        header,
        check_attention(platform, tiny),
        check_fused_distill(platform, tiny, hbm),
        check_model_step(tiny),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="accelerator_report.json")
    p.add_argument("--tiny", action="store_true", help="CPU-test sizes")
    a = p.parse_args()
    report = run(a.tiny)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
    for entry in report:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
