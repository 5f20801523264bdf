"""The checks to run the day a GPU or TPU is attached (scripts/accelerator_check.sh).

    python -m srpo_jax.aot.device_check --out=accelerator_report.json [--tiny]

Each check appends one entry to a single JSON report; nothing is downloaded (random
weights and inputs). On the accelerator, in this order, within a few minutes:

1. attention: the platform's fused kernel (cuDNN on GPU, splash on TPU) against the exact
   XLA path on left- and right-padded rows; max abs difference on valid rows.
2. fused distillation: the Pallas kernel's numerator and z against the float32 reference
   implementation, then its fwd+bwd time at N=4096, V=151936, D=2560 (bf16) against the
   HBM floor (reading the student and teacher logits once, at the chip's bandwidth).
3. SRPO step: one learner.train_step_fn (the program the memory plan compiles: student
   forward/backward, routed teacher forward, fused SDPO loss, AdamW, EMA) of a
   Qwen3-1.7B-shaped model (random weights, remat, bf16, the benchmark config's learner
   settings) on one micro-batch of 8 rows (512 + 1536 tokens), every row routed to a teacher
   row of 1024 + 1536 tokens; step time, and the runtime's peak memory against what the
   compiler predicted for the same program (memory_analysis).

--tiny runs the same code at CPU-test size (the fused checks say "skipped" off-accelerator).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from srpo_jax import config as config_lib
from srpo_jax.data import buckets
from srpo_jax.kernels.fused_distill import api
from srpo_jax.learner import batch as batching
from srpo_jax.learner import train_step as learner
from srpo_jax.model import attention as attn
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh


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
    ref = api.fused_distill(small, api.FusedDistillOptions(implementation="reference"))
    got = api.fused_distill(small, api.FusedDistillOptions(implementation=impl))
    rel = float(abs(got.numerator - ref.numerator) / max(abs(float(ref.numerator)), 1e-30))
    args = [x.astype(jnp.bfloat16) for x in (hs, ht, ws, wt)] + [mask]

    @jax.jit
    def step(hs, ht, ws, wt, mask):
        def num(hs, ws):
            inputs = api.FusedDistillInputs(hs, ht, ws, wt, mask)
            return api.fused_distill(inputs, api.FusedDistillOptions(implementation=impl)).numerator

        return jax.value_and_grad(num, argnums=(0, 1))(hs, ws)

    seconds = _timed(step, *args)
    floor_s = 2 * n * v * 2 / hbm_bytes_per_s if hbm_bytes_per_s else None
    out = {"check": "fused_distill", "impl": impl, "numerator_rel_err": rel, "fwd_bwd_s": seconds}
    out.update(hbm_floor_s=floor_s, status=_ok(rel < 1e-3))
    return out


def _srpo_step_config(tiny: bool):
    """The config of the checked step: the demo's at --tiny, else Qwen3-1.7B shapes (random
    weights, remat, bf16) through the benchmark config's learner settings, on one device."""
    if tiny:
        return config_lib.from_config_dict(config_lib.load_config_file("configs/demo.py"))
    cd = config_lib.load_config_file("configs/qwen3_4b_chem.py:method=srpo")
    with cd.unlocked():
        cd.model.preset, cd.model.hf_path, cd.model.random_init = "qwen3_1p7b", "", True
        cd.mesh.tensor = 1
        cd.data.max_prompt_len, cd.data.max_response_len = 512, 1536
        cd.algo.max_reprompt_len, cd.algo.group_size = 1024, 4
        cd.train.prompts_per_step = cd.train.mini_batch_prompts = 2
        cd.train.micro_batch_rows = 8  # one micro-batch of 8 rows, every row routed
    return config_lib.from_config_dict(cd)


def _random_batch(shape, vocab: int) -> dict:
    """Host arrays for TrainBatch.abstract's fields: random tokens, full masks, every row
    routed (teacher row m scores student row m), the plan's worst case."""
    rng = np.random.default_rng(0)
    out = {}
    for name, x in dataclasses.asdict(shape).items():
        if name.endswith(("ids_BS", "ids_BR", "ids_MT")):
            out[name] = rng.integers(0, vocab, x.shape, dtype=np.int32)
        elif name == "teacher_src_M":
            out[name] = np.broadcast_to(np.arange(x.shape[-1], dtype=np.int32), x.shape)
        elif name == "advantages_B":
            out[name] = rng.standard_normal(x.shape).astype(np.float32)
        elif name == "rollout_logprobs_BR":
            out[name] = np.full(x.shape, -1.0, np.float32)
        else:  # masks and validity flags
            out[name] = np.ones(x.shape, x.dtype)
    return out


def check_srpo_step(tiny: bool) -> dict:
    """One SRPO train step: the program the memory plan compiles (learner.train_step_fn with
    the trainer's step settings), on random weights and a random all-routed batch."""
    cfg = _srpo_step_config(tiny)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    lcfg, model_cfg = learner.StepSettings.from_config(cfg), cfg.model.architecture()
    graphdef, params = nnx.split(create_sharded_model(model_cfg, mesh, seed=0), nnx.Param)
    state = learner.init_state(params, lcfg, mesh)
    rows = cfg.train.micro_batch_rows or cfg.train.mini_batch_prompts * cfg.algo.group_size
    prompt_len, response_len, teacher_prompt_len = buckets.worst_case_lengths(cfg)
    shape = batching.TrainBatch.abstract(
        n_mini=cfg.train.prompts_per_step // cfg.train.mini_batch_prompts,
        n_micro=cfg.train.mini_batch_prompts * cfg.algo.group_size // rows,
        rows=rows,
        prompt_len=prompt_len,
        response_len=response_len,
        teacher_rows=rows,
        teacher_prompt_len=teacher_prompt_len,
    )
    b_shard = learner.batch_shardings(mesh, shape)
    batch = jax.device_put(
        batching.TrainBatch(**_random_batch(shape, model_cfg.vocab_size)), b_shard
    )
    step = learner.jit_train_step(lcfg, graphdef, state, batch, mesh)
    with jax.set_mesh(mesh):  # as Learner.train_step: the activation constraints apply
        compiled = step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    predicted = None
    if mem is not None:
        predicted = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
    seconds = []
    for _ in range(2):  # the state is donated: each call takes the previous call's output
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    out = {"check": "srpo_step", "preset": cfg.model.preset, "layers": model_cfg.num_layers}
    out.update(rows=rows, student_tokens=shape.input_ids_BS.shape[-1])
    out.update(teacher_tokens=shape.teacher_input_ids_MT.shape[-1], step_s=min(seconds))
    out.update(predicted_peak_bytes=predicted, peak_bytes=stats.get("peak_bytes_in_use"))
    out.update(finite=bool(all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(metrics))))
    out.update(status=_ok(out["finite"]))
    return out


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAILED"


def run(tiny: bool) -> list[dict]:
    from srpo_jax.aot import chips

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
        check_srpo_step(tiny),
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
