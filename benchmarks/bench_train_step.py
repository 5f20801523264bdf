"""Median wall time of one SRPO train step (after compilation) for a small Qwen3.

    python benchmarks/bench_train_step.py                      # the tiny test config
    python benchmarks/bench_train_step.py --hidden=256 --layers=4 --vocab=4096 --resp=128

Prints a markdown table: config, rows, tokens, routed rows, compile seconds, median and
min step seconds over --repeats steps. docs/performance.md records the CPU figure of the default
(the configuration of tests/learner/test_train_step.py) as the baseline for performance work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from srpo_jax.algo import advantages, routing
from srpo_jax.learner import batch as batching
from srpo_jax.learner import train_step as learner
from srpo_jax.model import tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh


def random_rows(rng, prompts, group, vocab, prompt_len, resp_len, method):
    b = prompts * group
    prompt_ids = [rng.integers(1, vocab, prompt_len).tolist() for _ in range(prompts)]
    responses = [
        rng.integers(1, vocab, rng.integers(resp_len // 2, resp_len + 1)).tolist() for _ in range(b)
    ]
    rewards = rng.integers(0, 2, b).astype(float)
    sdpo_mask, teacher_idx = routing.route(rewards, group, method)
    return batching.StepRows.from_lists(
        prompt_ids=[prompt_ids[r // group] for r in range(b)],
        response_ids=responses,
        rollout_logprobs=[(-rng.random(len(r))).tolist() for r in responses],
        advantages=np.asarray(advantages.group_advantages(rewards, group)),
        sdpo_rows=sdpo_mask,
        teacher_rows=teacher_idx >= 0,
        teacher_prompt_ids={
            int(r): rng.integers(1, vocab, prompt_len + resp_len).tolist()
            for r in np.flatnonzero(teacher_idx >= 0)
        },
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="srpo")
    ap.add_argument("--vocab", type=int, default=97)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt_len", type=int, default=8)
    ap.add_argument("--resp", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--impl", default="xla")
    args = ap.parse_args()

    mcfg = tiny(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_layers=args.layers,
        head_dim=8 if args.hidden <= 64 else 32,
    )
    cfg = learner.StepSettings.of(
        method=args.method, topk=min(10, args.vocab), lr=1e-3, warmup_steps=0,
        fused_implementation=args.impl, chunk_size=256,
    )  # fmt: skip
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    graphdef, params = nnx.split(create_sharded_model(mcfg, mesh), nnx.Param)
    state = learner.init_state(params, cfg, mesh)
    rng = np.random.default_rng(0)
    rows = random_rows(
        rng, args.prompts, args.group, args.vocab, args.prompt_len, args.resp, args.method
    )
    batch = batching.build_train_batch(
        rows, num_minibatches=1, micro_batch_rows=rows.num_rows, pad_id=0
    )
    lrn = learner.Learner(cfg, graphdef)
    t0 = time.perf_counter()
    state, m = lrn.train_step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, m = lrn.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    tokens = int(batch.response_mask_BR.sum())
    routed = int(batch.teacher_valid_M.sum())
    cols = "method | D | L | V | rows | resp tokens | routed rows | compile s | median s | min s"
    print(f"| {cols} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.method} | {args.hidden} | {args.layers} | {args.vocab} | {rows.num_rows} | "
        f"{tokens} | {routed} | {compile_s:.2f} | {statistics.median(times):.4f} | "
        f"{min(times):.4f} |"
    )
    print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")


if __name__ == "__main__":
    main()
