"""Where one srpo_jax training step's time goes: timed phases plus a profiler-trace census.

    python benchmarks/profile_step.py                          # tiny, grpo
    python benchmarks/profile_step.py --size=mid --method=srpo --steps=6

Builds the problem of bench_vs_tunix.py (configs/demo.py with the size's shape, no
warm-up) and runs the step of schedule._one_step piece by piece (prepare_step, the learner's
train_step, the engine weight sync, the metric fetch), after --warmup steps that compile.
Prints two tables:

1. phases: median wall and process CPU seconds per step (CPU time counts every thread of
   this process, so it reads the work done even when other processes share the cores);
2. a census of --trace steps under jax.profiler: jitted executables launched per step
   (by jitted function; eager jnp ops count as their own), host->device puts,
   device->host fetches, blocking waits, recompiles; and what the learner's compiled
   step holds beyond the objective's arithmetic (old log-prob pass, EMA teacher update,
   teacher forward rows) with its XLA cost estimate;
3. the learner's compiled ops by the model part they belong to (forward / backward of the
   MLP, attention, projections, the chunked loss head, the rest), summed from the trace's
   per-op events (XLA:CPU records one per executed thunk) and mapped to the jax op that
   made them through the compiled HLO's op_name metadata.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib.util
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time

import jax
from jax import monitoring

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_vs_tunix  # noqa: E402  (SIZES: the same problem as the side-by-side run)

from srpo_jax import multihost  # noqa: E402
from srpo_jax.config import from_config_dict  # noqa: E402
from srpo_jax.data import datasets  # noqa: E402
from srpo_jax.learner import train_step as learner  # noqa: E402
from srpo_jax.sharding import make_mesh  # noqa: E402
from srpo_jax.trainer import setup as trainer  # noqa: E402
from srpo_jax.trainer import step  # noqa: E402

_COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **_: (
        _COMPILES.append(secs) if name == "/jax/core/compile/backend_compile_duration" else None
    )
)


def build_config(size: str, method: str):
    spec = importlib.util.spec_from_file_location("demo", REPO / "configs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config(f"method={method}")
    s = bench_vs_tunix.SIZES[size]
    o = c.model.overrides
    o.num_layers, o.hidden_size, o.intermediate_size = s["layers"], s["hidden"], s["mlp"]
    o.num_heads, o.num_kv_heads, o.head_dim = s["heads"], s["kv_heads"], s["head_dim"]
    o.vocab_size = s["vocab"]
    c.data.max_prompt_len = bench_vs_tunix.PROMPT_BUCKET
    c.data.max_response_len = s["new_tokens"]
    c.algo.group_size = s["group"]
    c.train.prompts_per_step = c.train.mini_batch_prompts = s["prompts"]
    c.warmup.steps = 0
    return from_config_dict(c)


class Loop:
    """The pieces of trainer.setup, set up as a fresh run does."""

    def __init__(self, cfg, workdir: pathlib.Path):
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh)
        self.tok = trainer.load_run_tokenizer(cfg.tokenizer.path, workdir)
        model_cfg = cfg.model.architecture()
        self.train_set = datasets.PromptSet(
            trainer.split_examples(cfg, "train"), self.tok, cfg.data.max_prompt_len
        )
        graphdef, params = trainer.initial_params(cfg, model_cfg, self.mesh)
        self.lcfg = learner.StepSettings.from_config(cfg)
        self.state = learner.init_state(params, self.lcfg, self.mesh)
        self.lrn = learner.Learner(self.lcfg, graphdef, self.mesh)
        self.engine = trainer.make_engine(
            cfg, model_cfg, self.state.params, self.mesh, self.tok.pad_token_id, workdir
        )
        self.sampler = datasets.EpochSampler(len(self.train_set), cfg.data.shuffle_seed)
        self.n = 0

    def run_step(self) -> dict:
        """One step, as schedule._one_step does it; returns wall and CPU seconds per phase."""
        marks = [("start", time.perf_counter(), time.process_time())]

        def mark(name):
            marks.append((name, time.perf_counter(), time.process_time()))

        prep = step.prepare_step(
            self.cfg, self.n, self.engine, self.train_set, self.sampler, self.tok
        )
        mark("host: rollout, rewards, routing, packing")
        self.state, dev = self.lrn.train_step(self.state, prep.batch)
        mark("learner: dispatch")
        jax.block_until_ready(self.state)
        mark("learner: wait for the device")
        self.engine.update_weights(self.state.params, self.n + 1)
        mark("weight sync to the engine")
        multihost.tree_to_host((dev, self.state.skipped_updates, self.state.consecutive_skips))
        mark("metric fetch")
        self.n += 1
        out = {}
        for (_, w0, c0), (name, w1, c1) in zip(marks, marks[1:], strict=False):
            out[name] = (w1 - w0, c1 - c0)
        out["step"] = (marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2])
        out["rollout (engine.generate)"] = (prep.metrics["time/rollout_s"], float("nan"))
        return out


def census(trace_dir: pathlib.Path, steps: int) -> dict:
    """Counts per step from the perfetto trace jax.profiler wrote."""
    path = next(trace_dir.rglob("perfetto_trace.json.gz"))
    data = json.loads(gzip.decompress(path.read_bytes()))
    events = [e for e in data["traceEvents"] if e.get("ph") == "X"]
    launches = collections.Counter()
    calls = sorted(
        (e for e in events if e["name"].startswith("PjitFunction(")), key=lambda e: e["ts"]
    )
    execs = [e for e in events if e["name"] == "CommonPjRtLoadedExecutable::ExecutePrepare"]
    for ex in execs:  # the innermost jitted call around each executable launch
        owner = [c for c in calls if c["ts"] <= ex["ts"] <= c["ts"] + c["dur"]]
        launches[owner[-1]["name"][len("PjitFunction(") : -1] if owner else "?"] += 1
    count = collections.Counter(e["name"] for e in events)
    return {
        "launches": {k: v / steps for k, v in launches.most_common()},
        "host->device puts": (count["DevicePut"] + count["DevicePutWithSharding"]) / steps,
        "device->host array fetches": count["np.asarray(jax.Array)"] / steps,
        "blocking waits": (count["$api.py:2479 block_until_ready"]) / steps,
    }


# (group, test on the jax op_name) in order: the first that matches names the op.
_OP_GROUPS = (
    ("loss head (chunked vocab)", lambda op: "while/body" in op),
    ("attention", lambda op: any(s in op for s in ("bkgts", "btkgh", "softmax", "_where"))),
    ("MLP", lambda op: any(s in op for s in ("btf", "df->", "silu"))),
    ("q/k/v/o projections", lambda op: any(s in op for s in ("dnh", "dkh", "nhd"))),
)


def op_groups(trace_dir: pathlib.Path, hlo_text: str, steps: int) -> dict:
    """Seconds per step of the compiled learner's ops, by forward/backward and model part."""
    op_of = {}
    for line in hlo_text.splitlines():
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', line)
        if m:
            op_of[m.group(1)] = m.group(2)
    path = next(trace_dir.rglob("perfetto_trace.json.gz"))
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    out = collections.Counter()
    for e in events:
        module = e.get("args", {}).get("hlo_module", "jit_train_step_fn")
        mine = e.get("ph") == "X" and module == "jit_train_step_fn"  # not the engine's ops
        op = op_of.get(e.get("name")) if mine else None
        if op is None or e["name"].startswith("while"):
            continue  # not a learner op, or a loop whose body ops are counted themselves
        group = next((g for g, test in _OP_GROUPS if test(op)), "the rest (norms, RoPE, optimizer)")
        out[("backward " if "transpose(" in op else "forward ") + group] += e["dur"] / 1e6 / steps
    return dict(out.most_common())


def learner_extras(loop: Loop, batch) -> list[str]:
    n_mini = batch.input_ids_BS.shape[0]
    rows = batch.teacher_input_ids_MT.shape[2]
    key = next(iter(loop.lrn._compiled))
    with jax.set_mesh(loop.mesh):
        compiled = loop.lrn._compiled[key].lower(loop.state, batch).compile()
    cost = compiled.cost_analysis()
    loop.hlo_text = compiled.as_text()
    return [
        f"old log-prob forward pass: {'yes' if n_mini > 1 else 'no'} ({n_mini} mini-batch(es))",
        "EMA teacher update: yes (every method, every step)",
        f"teacher forward rows per micro-batch: {rows}",
        f"XLA estimate: {cost.get('flops', 0) / 1e9:.2f} GFLOP, "
        f"{cost.get('bytes accessed', 0) / 1e6:.0f} MB accessed per step",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="tiny", choices=sorted(bench_vs_tunix.SIZES))
    ap.add_argument("--method", default="grpo")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--trace", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        loop = Loop(build_config(args.size, args.method), pathlib.Path(tmp))
        for _ in range(args.warmup):
            loop.run_step()
        compiles_before = len(_COMPILES)
        rows = [loop.run_step() for _ in range(args.steps)]
        recompiles = (len(_COMPILES) - compiles_before) / args.steps
        jax.profiler.start_trace(str(pathlib.Path(tmp) / "trace"), create_perfetto_trace=True)
        for _ in range(args.trace):
            loop.run_step()
        jax.profiler.stop_trace()
        counts = census(pathlib.Path(tmp) / "trace", args.trace)
        batch = step.prepare_step(
            loop.cfg, loop.n, loop.engine, loop.train_set, loop.sampler, loop.tok
        ).batch
        extras = learner_extras(loop, batch)
        groups = op_groups(pathlib.Path(tmp) / "trace", loop.hlo_text, args.trace)
    print(f"## {args.size}, {args.method}: median of {args.steps} steps after {args.warmup}\n")
    print("| phase | wall s | CPU s |\n|---|---|---|")
    for name in rows[0]:
        w = statistics.median(r[name][0] for r in rows)
        c = statistics.median(r[name][1] for r in rows)
        print(f"| {name} | {w:.4f} | {c:.4f} |")
    print(f"\n## per step, from a jax.profiler trace of {args.trace} steps\n")
    print("| what | per step |\n|---|---|")
    for name, n in counts["launches"].items():
        print(f"| executables launched by `{name}` | {n:g} |")
    for name in ("host->device puts", "device->host array fetches", "blocking waits"):
        print(f"| {name} | {counts[name]:g} |")
    print(f"| recompiles (after warm-up) | {recompiles:g} |")
    print("\n## the learner's compiled step\n")
    for line in extras:
        print(f"- {line}")
    print("\n## the learner's ops by model part (seconds per step, from the trace)\n")
    print("| part | s |\n|---|---|")
    for name, secs in groups.items():
        print(f"| {name} | {secs:.3f} |")


if __name__ == "__main__":
    main()
