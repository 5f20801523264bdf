"""Padded against packed learner batches, side by side in one run (CPU, a small Qwen3).

    python benchmarks/bench_packing.py                 # both mixes, the demo model
    python benchmarks/bench_packing.py --repeats=5 --scale=16

For each length mix, one SRPO step's rows are built twice, as the padded TrainBatch
(learner/batch.py: one micro-batch, power-of-two length buckets) and as the PackedBatch
(learner/packing.py: one micro-batch, streams of at most the default train.pack_len of the
mix's config: configs/demo.py's 272 for demo, 24576 at the paper's limits), and reported:

- padding: the fraction of the student's and the teacher's token slots that hold no row
  token, at the mix's real lengths (host only);
- FLOPs: matmul FLOPs of the compiled train step (srpo_jax.aot.hlo_flops, loops counted
  by their trip counts) at the mix's real lengths, compile only;
- wall: the median wall time of the executed step at lengths divided by --scale (the
  mix's shape, CPU-sized), after one compile;
- then, host only, the packed padding over --seeds draws of each mix (first, mean, max)
  and how many distinct batch shapes those draws give (each one a compiled variant).

Mixes (16 prompts x 8 samples, SRPO routing, about half the groups with a success):

- demo: the CPU demo's own rollouts (configs/demo.py): its synthetic prompts and teacher
  prompts rendered by the demo's tokenizer; every response is the 10-token answer (the demo
  logs rollout/response_len_mean 9.9-10.0, max 10, of a 16-token limit).
- longtail: the paper's limits (prompts <= 2048, responses <= 8192 tokens), the long-tail
  mix of the memory plan (`srpo_jax.aot.length_mix.paper_lengths` states the distribution
  and why; `python -m srpo_jax.plan --lengths=paper` plans a step at it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from srpo_jax import config as config_lib
from srpo_jax.algo import advantages, routing
from srpo_jax.aot import length_mix
from srpo_jax.aot.hlo_flops import dot_flops
from srpo_jax.data import datasets, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.data.buckets import bucket_length
from srpo_jax.learner import batch as batching
from srpo_jax.learner import packing
from srpo_jax.learner import train_step as learner
from srpo_jax.model import tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh

PROMPTS, GROUP, VOCAB = 16, 8, 512


def _rows(prompt_lens, response_lens, teacher_extra, rng) -> batching.StepRows:
    """Random tokens of the given lengths; SRPO routing of random rewards; a routed row's
    teacher prompt is its prompt plus teacher_extra[row] tokens."""
    b = PROMPTS * GROUP
    rewards = (rng.random(b) < 0.3).astype(float)
    sdpo, teacher_idx = routing.route(rewards, GROUP, "srpo")
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in prompt_lens]
    responses = [rng.integers(1, VOCAB, n).tolist() for n in response_lens]
    return batching.StepRows.from_lists(
        prompt_ids=[prompts[r // GROUP] for r in range(b)],
        response_ids=responses,
        rollout_logprobs=[(-rng.random(len(r))).tolist() for r in responses],
        advantages=np.asarray(advantages.group_advantages(rewards, GROUP)),
        sdpo_rows=sdpo,
        teacher_rows=teacher_idx >= 0,
        teacher_prompt_ids={
            int(r): rng.integers(1, VOCAB, prompt_lens[r // GROUP] + teacher_extra[r]).tolist()
            for r in np.flatnonzero(teacher_idx >= 0)
        },
    )


def demo_lengths(rng):
    """(prompt lengths [PROMPTS], response lengths [B], teacher extra [B]) of the demo."""
    tok = tok_lib.load_tokenizer(tok_lib.build_tiny_tokenizer(tempfile.mkdtemp()))
    train, _ = synthetic.make_synthetic_splits(512, 256, seed=0)
    picked = [train[i] for i in rng.choice(len(train), PROMPTS, replace=False)]
    prompt_lens = [len(datasets.encode_prompt(tok, datasets.messages(ex))) for ex in picked]
    teacher = [
        len(
            routing.render_teacher_prompt(
                tok, datasets.messages(ex), synthetic.answer_text(ex.answer)
            )
        )
        for ex in picked
    ]
    extra = np.repeat(np.asarray(teacher) - np.asarray(prompt_lens), GROUP)
    return np.asarray(prompt_lens), np.full(PROMPTS * GROUP, 10), extra


def longtail_lengths(rng):
    return length_mix.paper_lengths(rng, PROMPTS, GROUP)


def scaled(lengths, scale: int):
    p, r, extra = lengths
    return tuple(np.maximum(np.asarray(x) // scale, 1) for x in (p, r, extra))


def default_pack_len(mix: str, rows: batching.StepRows) -> int:
    """The default train.pack_len of the mix's config: the demo config's (its longest padded
    teacher row, 272), else the longest padded row of `rows` (24576 at the paper's limits,
    the Qwen3-8B config's)."""
    if mix == "demo":
        cfg = config_lib.load_config_file("configs/demo.py")
        return config_lib.pack_len_of(config_lib.from_config_dict(cfg))
    p = bucket_length(int(rows.prompt_lens_B.max()))
    t = bucket_length(int(rows.teacher_prompt_lens_B.max()))
    return max(p, t) + bucket_length(int(rows.response_lens_B.max()))


def batches(rows: batching.StepRows, pack_len: int):
    """(padded, packed) batches of `rows`, one micro-batch each; packed at pack_len."""
    padded = batching.build_train_batch(
        rows, num_minibatches=1, micro_batch_rows=rows.num_rows, pad_id=0
    )
    return padded, packing.build_packed_batch(rows, num_minibatches=1, pack_len=pack_len)


def mix_rows(mix: str, seed: int) -> tuple:
    """(lengths, rows) of one draw of the mix."""
    rng = np.random.default_rng(seed)
    lengths = demo_lengths(rng) if mix == "demo" else longtail_lengths(rng)
    return lengths, _rows(*lengths, np.random.default_rng(seed + 1))


def padding_over_seeds(mix: str, seeds: int, pack_len: int) -> str:
    """A table row: packed padding of `seeds` draws (first, mean, max), distinct shapes."""
    fracs, shapes = [], set()
    for seed in range(seeds):
        _, rows = mix_rows(mix, seed)
        packed = batches(rows, pack_len or default_pack_len(mix, rows))[1]
        fracs.append(1 - length_mix.real_tokens(rows) / _slots(packed))
        shapes.add(tuple(x.shape for x in jax.tree.leaves(packed)))
    return (
        f"| {mix} | {seeds} | {fracs[0]:.1%} | {np.mean(fracs):.1%} | {max(fracs):.1%} "
        f"| {len(shapes)} |"
    )


def _slots(packed) -> int:
    return packed.input_ids_KL.size + packed.teacher_input_ids_JL.size


def padding_fraction(rows, padded, packed) -> tuple[float, float]:
    real = length_mix.real_tokens(rows)
    pad_slots = padded.input_ids_BS.size + padded.teacher_input_ids_MT.size
    return 1 - real / pad_slots, 1 - real / _slots(packed)


class Step:
    """A small Qwen3's SRPO step: compile-only FLOPs and executed wall time of a batch."""

    def __init__(self, hidden: int, layers: int):
        mcfg = tiny(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_layers=layers,
            head_dim=16,
            max_position_embeddings=32768,
            attention_query_chunk=512,
        )
        self.cfg = learner.StepSettings.of(
            method="srpo", topk=20, lr=1e-3, warmup_steps=0, fused_implementation="xla",
            chunk_size=1024,
        )  # fmt: skip
        mesh = make_mesh(MeshConfig(), jax.devices()[:1])
        self.graphdef, params = nnx.split(create_sharded_model(mcfg, mesh), nnx.Param)
        self.state = learner.init_state(params, self.cfg, mesh)

    def flops(self, batch) -> int:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
        fn = learner.jit_train_step(self.cfg, self.graphdef, self.state, abstract)
        return dot_flops(fn.lower(self.state, abstract).compile().as_text())

    def wall(self, batch, repeats: int) -> float:
        fn = learner.jit_train_step(self.cfg, self.graphdef, self.state, batch)
        state = jax.tree.map(lambda x: x.copy(), self.state)
        state, m = fn(state, batch)  # compile
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, m = fn(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--scale", type=int, default=32, help="long-tail lengths / this for wall")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mixes", default="demo,longtail")
    ap.add_argument("--pack_len", type=int, default=0, help="0: the default train.pack_len")
    ap.add_argument("--seeds", type=int, default=20, help="draws for the padding table")
    args = ap.parse_args()
    step = Step(args.hidden, args.layers)
    print(
        "| mix | layout | student x teacher slots | padding | step GFLOPs (real lengths) "
        "| wall s (lengths / scale) |"
    )
    print("|---|---|---|---|---|---|")
    for mix in args.mixes.split(","):
        lengths, rows = mix_rows(mix, 0)
        scale = 1 if mix == "demo" else args.scale
        pack_len = args.pack_len or default_pack_len(mix, rows)
        padded, packed = batches(rows, pack_len)
        fracs = padding_fraction(rows, padded, packed)
        small = batches(_rows(*scaled(lengths, scale), np.random.default_rng(1)), pack_len // scale)
        shapes = (
            f"{padded.input_ids_BS.shape[2:]} x {padded.teacher_input_ids_MT.shape[2:]}",
            f"{packed.input_ids_KL.shape[2:]} x {packed.teacher_input_ids_JL.shape[2:]}",
        )
        for i, (name, batch) in enumerate((("padded", padded), ("packed", packed))):
            gflops = step.flops(batch) / 1e9
            wall = step.wall(small[i], args.repeats)
            print(
                f"| {mix} | {name} | {shapes[i]} | {fracs[i]:.1%} | {gflops:.1f} "
                f"| {wall:.3f} (/{scale}) |",
                flush=True,
            )
    print(f"device: {jax.devices()[0].device_kind}, model hidden {args.hidden} x {args.layers}")
    print("\n| mix | draws | packed padding, draw 0 | mean | max | distinct shapes |")
    print("|---|---|---|---|---|---|")
    for mix in args.mixes.split(","):
        print(padding_over_seeds(mix, args.seeds, args.pack_len), flush=True)


if __name__ == "__main__":
    main()
