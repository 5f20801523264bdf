"""srpo_jax's main loop against tunix's GRPO learner on the same problem, side by side.

    python benchmarks/bench_vs_tunix.py                    # tiny and mid, 2 rounds
    python benchmarks/bench_vs_tunix.py --sizes=tiny --rounds=3 --steps=20

Both sides train a random Qwen3 of the same shape (fp32) with GRPO, one update per step,
on the same prompts (srpo_jax's synthetic task rendered with its chat template by the
byte-level BPE tokenizer that srpo_jax builds in code; tunix gets the same tokenizer
directory and the prompt texts), sampling at T = 1, AdamW with global-norm clip 1.0:

- tiny: 2 layers, hidden 64, MLP 128, 4 query / 2 kv heads of 16, vocab 512; 4 prompts
  x 4 rollouts, prompts of about 75 tokens in a 128 bucket, 32 new tokens;
- mid: 4 layers, hidden 256, MLP 768, 4 query / 2 kv heads of 64, vocab 4096; 8 prompts
  x 8 rollouts, 128 new tokens.

srpo_jax runs `python -m srpo_jax.main` (its real loop, metrics.jsonl's time/* figures:
step, rollout, and learner + weight sync as "update") for --methods (grpo and srpo; with
a random model nothing is correct, so srpo routes nothing and the step is GRPO's plus what
srpo does regardless). tunix runs benchmarks/tunix_side.py in its own virtual environment,
.venv-tunix, created on first use with google-tunix and the jax/flax/optax versions pinned
below (the versions srpo_jax's environment uses, so neither side has a different XLA).

tunix pads every prompt to its RolloutConfig.max_prompt_length, while srpo_jax pads a
step's prompts to a bucket of the longest one: with --length_buckets_per_octave=4 (the
default here; config.data.length_buckets_per_octave) 48 for these 48-token prompts, with 1
(the library's default) the power of two, 64. So tunix runs twice: "tunix" with
max_prompt_length = data.max_prompt_len (128, the limit both are given), and "tunix_tight"
with max_prompt_length = the longest prompt (48), which takes the padding out of the
comparison.

The sides run one after another in rounds (srpo grpo, srpo srpo, tunix, tunix_tight; then
again), so
a machine whose load drifts penalises both alike; each figure is the median over the
steps after the first --skip of every run (compiles excluded), pooled over rounds.
Prints one markdown table; the ratio is srpo_jax / tunix (< 1: srpo_jax is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from srpo_jax import jax_startup

jax_startup.import_jax()  # the [aot] extra's CUDA plugin probes for drivers on import

REPO = pathlib.Path(__file__).resolve().parents[1]
TUNIX_VENV = REPO / ".venv-tunix"
TUNIX_PINS = (
    "google-tunix==0.1.7",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
)
SIZES = {
    "tiny": dict(
        layers=2, hidden=64, mlp=128, heads=4, kv_heads=2, head_dim=16, vocab=512,
        prompts=4, group=4, new_tokens=32, steps=20,
    ),
    "mid": dict(
        layers=4, hidden=256, mlp=768, heads=4, kv_heads=2, head_dim=64, vocab=4096,
        prompts=8, group=8, new_tokens=128, steps=8,
    ),
}  # fmt: skip
PROMPT_BUCKET = 128
LR = 1e-3


def ensure_tunix_venv() -> pathlib.Path:
    """The tunix interpreter; creates and pins .venv-tunix once (cached afterwards)."""
    python = TUNIX_VENV / "bin" / "python"
    marker = TUNIX_VENV / "pins.txt"
    if python.exists() and marker.exists() and marker.read_text().split() == list(TUNIX_PINS):
        return python
    subprocess.run([sys.executable, "-m", "venv", str(TUNIX_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TUNIX_PINS], check=True)
    marker.write_text("\n".join(TUNIX_PINS))
    return python


def write_problem(size: str, steps: int, work: pathlib.Path) -> dict:
    """Tokenizer directory, prompts and shapes shared by both sides."""
    from srpo_jax.data import datasets, synthetic
    from srpo_jax.data import tokenizer as tok_lib
    from srpo_jax.trainer import step

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tok_lib.build_tiny_tokenizer(tok_dir)
    tokenizer = tok_lib.load_tokenizer(tok_dir)
    train, _ = synthetic.make_synthetic_splits(512, 64, seed=0)
    prompts = datasets.PromptSet(train, tokenizer, PROMPT_BUCKET)
    shape = SIZES[size]
    problem = dict(
        model={k: shape[k] for k in ("layers", "hidden", "mlp", "heads", "kv_heads", "head_dim")},
        prompts=shape["prompts"],
        group=shape["group"],
        new_tokens=shape["new_tokens"],
        prompt_bucket=PROMPT_BUCKET,
        steps=steps or shape["steps"],
        lr=LR,
        seed=0,
        tokenizer_dir=str(tok_dir),
        stop_ids=list(step.stop_ids(tokenizer)),
        prompt_texts=[tokenizer.decode(ids) for ids in prompts.prompt_ids[:256]],
        answers=[synthetic.answer_text(ex.answer) for ex in prompts.examples[:256]],
        mean_prompt_tokens=statistics.mean(map(len, prompts.prompt_ids)),
        longest_prompt_tokens=max(map(len, prompts.prompt_ids[:256])),
    )
    problem["model"]["vocab"] = shape["vocab"]
    return problem


def srpo_args(p: dict, method: str, workdir: pathlib.Path, per_octave: int) -> list[str]:
    m = p["model"]
    over = {
        "model.overrides.num_layers": m["layers"],
        "model.overrides.hidden_size": m["hidden"],
        "model.overrides.intermediate_size": m["mlp"],
        "model.overrides.num_heads": m["heads"],
        "model.overrides.num_kv_heads": m["kv_heads"],
        "model.overrides.head_dim": m["head_dim"],
        "model.overrides.vocab_size": m["vocab"],
        "tokenizer.path": p["tokenizer_dir"],
        "data.max_prompt_len": p["prompt_bucket"],
        "data.max_response_len": p["new_tokens"],
        "data.length_buckets_per_octave": per_octave,
        "algo.group_size": p["group"],
        "train.prompts_per_step": p["prompts"],
        "train.mini_batch_prompts": p["prompts"],
        "warmup.steps": 0,
        "train.num_steps": p["steps"],
        "optim.lr": p["lr"],
        "eval.every_steps": 10**6,
        "checkpoint.every_steps": 10**6,
    }
    return [
        "-m",
        "srpo_jax.main",
        f"--config={REPO / 'configs' / 'demo.py'}:method={method}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in over.items()),
    ]


def run_srpo(p: dict, method: str, work: pathlib.Path, skip: int, per_octave: int) -> dict:
    wd = pathlib.Path(tempfile.mkdtemp(prefix=f"srpo_{method}_", dir=work))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, *srpo_args(p, method, wd, per_octave)],
        check=True,
        env=env,
        capture_output=True,
    )
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r][skip:]
    return {
        "step_s": [r["time/step_s"] for r in rows],
        "rollout_s": [r["time/rollout_s"] for r in rows],
        "update_s": [r["time/learner_s"] + r["time/sync_s"] for r in rows],
        "len": [r["rollout/response_len_mean"] for r in rows],
    }


def run_tunix(p: dict, python: pathlib.Path, work: pathlib.Path, skip: int, tight: bool) -> dict:
    """tunix's timings; tight: its prompt length is the longest prompt, not the 128 limit."""
    if tight:
        p = dict(p, prompt_bucket=p["longest_prompt_tokens"])
    prob = work / "problem.json"
    out = work / "tunix_out.json"
    prob.write_text(json.dumps(p))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [str(python), str(REPO / "benchmarks" / "tunix_side.py"), str(prob), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        sys.exit(f"error: tunix side failed:\n{res.stderr[-4000:]}")
    r = json.loads(out.read_text())
    return {k: r[k][skip:] for k in ("step_s", "rollout_s", "update_s")}


TUNIX_SIDES = ("tunix", "tunix_tight")


def table(results: dict, methods: list[str]) -> str:
    """One row per side; the srpo_jax rows carry their step ratio to each tunix side."""
    med = statistics.median
    lines = [
        "| size | side | step / rollout / update s (median) | step ratio to tunix "
        "(prompt 128) | to tunix_tight (prompt = longest) |",
        "|---|---|---|---|---|",
    ]
    for size, res in results.items():
        step = {side: med(res[side]["step_s"]) for side in [*methods, *TUNIX_SIDES]}
        for side in [*methods, *TUNIX_SIDES]:
            s = {k: med(res[side][k]) for k in ("step_s", "rollout_s", "update_s")}
            name = side if side in TUNIX_SIDES else f"srpo_jax {side}"
            ratios = (
                ["", ""]
                if side in TUNIX_SIDES
                else [f"{step[side] / step[t]:.2f}x" for t in TUNIX_SIDES]
            )
            lines.append(
                f"| {size} | {name} | {s['step_s']:.3f} / {s['rollout_s']:.3f} / "
                f"{s['update_s']:.3f} | {ratios[0]} | {ratios[1]} |"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,mid")
    ap.add_argument("--methods", default="grpo,srpo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="steps per run (0: the size's own)")
    ap.add_argument("--skip", type=int, default=2, help="leading steps dropped (compiles)")
    ap.add_argument(
        "--length_buckets_per_octave", type=int, default=4, help="srpo_jax's padding buckets"
    )
    args = ap.parse_args()
    sizes, methods = args.sizes.split(","), args.methods.split(",")
    for name in sizes:
        if name not in SIZES:
            sys.exit(f"error: --sizes: unknown size {name!r} (known: {', '.join(SIZES)})")
    python = ensure_tunix_venv()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_tunix_") as tmp:
        for size in sizes:
            work = pathlib.Path(tmp) / size
            work.mkdir()
            p = write_problem(size, args.steps, work)
            res = results[size] = {k: {} for k in [*methods, *TUNIX_SIDES]}
            for r in range(args.rounds):
                for side in [*methods, *TUNIX_SIDES]:
                    if side in TUNIX_SIDES:
                        got = run_tunix(p, python, work, args.skip, tight=side == "tunix_tight")
                    else:
                        got = run_srpo(p, side, work, args.skip, args.length_buckets_per_octave)
                    for k, v in got.items():
                        res[side].setdefault(k, []).extend(v)
                    print(f"{size} round {r + 1} {side}: median step "
                          f"{statistics.median(got['step_s']):.3f} s", flush=True)  # fmt: skip
            lens = res[methods[0]]["len"]
            print(f"{size}: prompts {p['mean_prompt_tokens']:.0f} tokens on average (longest "
                  f"{p['longest_prompt_tokens']}), srpo_jax responses "
                  f"{statistics.mean(lens):.1f} tokens on average")  # fmt: skip
    print(table(results, methods))


if __name__ == "__main__":
    main()
