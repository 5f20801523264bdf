"""One step off-policy (rollout.overlap=1) against the on-policy loop, as a ratio in one run.

    python benchmarks/bench_overlap.py                       # measure, then the estimate
    python benchmarks/bench_overlap.py --estimate_only       # the 8 x H20 estimate only

Emulates the paper's two pools on a 2-core machine: one real sglang-jax server (the cached
venv of tests/rollout/sglang_env.py, tiny random Qwen3 checkpoint) pinned to core 0 is the
rollout pool; the learner (`python -m srpo_jax.main`, the demo-scale SRPO config over that
server) pinned to core 1 is the learner pool. The learner's XLA threads inherit its
affinity mask (XLA sizes its CPU pool from that mask), so they stay on core 1. sglang-jax has
no weight-update route: the runs use rollout.sglang.sync="none", so both arms skip the sync
(it would cost the same in both) and the server keeps its initial weights.

The defaults (4 prompts x 8 rollouts, 8-token responses, a 4-layer hidden-512 model) make
the two halves take similar times here: at the demo's shape (16 x 8, 16 tokens, the tests'
2-layer hidden-128 model) the server took 9x the learner's time (25.7 s against 2.9 s per
step), which leaves overlap nothing to hide. A random model never scores, so SRPO routes no
row to a teacher: the learner runs its no-teacher variant.

Both arms run against the same server with the same seeds, in --rounds rounds whose order
alternates (0,1 then 1,0 ...), so background load lands on both. Each run is a fresh learner
process; its first --warmup steps (compiles) are dropped, and so is its last step (an
overlapped run's last step has no next rollout to generate beside it). Prints the step-time table
(median over the kept steps with min-max, the ratio, each pool's busy fraction, the load
average at the end of each run), the per-step time/* profile, then the estimate for the
paper's setting (Qwen3-8B, 8 x H20 per pool).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "rollout"))  # sglang_env: venv, checkpoint, flags

SERVER_CORE, LEARNER_CORE = 0, 1
PROFILE_KEYS = ("rollout_s", "rollout_wait_s", "reward_s", "teacher_s", "packing_s",
                "learner_s", "sync_s", "step_s")  # fmt: skip

# The demo config with the sglang-jax-friendly checkpoint, rollouts from the running server.
CONFIG = """
import importlib.util

spec = importlib.util.spec_from_file_location("demo", {demo!r})
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def get_config(arg=None):
    c = demo.get_config(arg)
    with c.unlocked():
        c.model.preset = ""
        c.model.hf_path = {ckpt!r}
        c.model.overrides = {{}}
        c.tokenizer.path = {tokenizer!r}
        c.algo.group_size = {group}
        c.train.prompts_per_step = {prompts}
        c.train.mini_batch_prompts = {prompts}
        c.data.max_response_len = {response_len}
        c.train.num_steps = {steps}
        c.warmup.steps = 0
        c.eval.every_steps = 0
        c.checkpoint.every_steps = 0
        c.rollout.engine = "sglang"
        c.rollout.sglang.urls = ({url!r},)
        c.rollout.sglang.sync = "none"
        c.rollout.overlap = {overlap}
    return c
"""


def _checkpoint(args, path: pathlib.Path) -> pathlib.Path:
    """A random Qwen3 of the asked width and depth in sglang-jax's CPU shape (head_dim 128,
    rope_theta at the top of config.json), saved by transformers in fp32."""
    import sglang_env
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=sglang_env.VOCAB, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=128, max_position_embeddings=512, tie_word_embeddings=False, rope_theta=1e6,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    sglang_env._rope_theta_on_top(path)
    return path


def _start_server(args, tmp: pathlib.Path):
    import sglang_env

    from srpo_jax.rollout import sglang_server

    python = sglang_env.ensure_venv(sglang_env.find_python312())
    ckpt = _checkpoint(args, tmp / "model")
    template = f"taskset -c {SERVER_CORE} " + sglang_env.launch_template(python)
    env = dict(os.environ, **dict(sglang_env.server_env()))
    port = sglang_server.free_port()
    servers = sglang_server.launch_servers(
        template, model_path=str(ckpt), host="127.0.0.1", ports=[port], log_dir=tmp,
        startup_timeout_s=900, env=env,
        extra_flags=sglang_server.launch_flags(template, deterministic=False),
    )  # fmt: skip
    return servers[0], ckpt


def _run_arm(args, tmp, url, ckpt, overlap: int, rnd: int) -> dict:
    """One learner process on LEARNER_CORE; its kept steps' records and the load average."""
    from srpo_jax.trainer.metrics import read_metrics

    config = tmp / f"arm{overlap}_r{rnd}.py"
    config.write_text(
        CONFIG.format(
            demo=str(REPO / "configs" / "demo.py"), ckpt=str(ckpt), tokenizer=str(tmp / "tok"),
            group=args.group, prompts=args.prompts, response_len=args.response_len,
            steps=args.warmup + args.steps + 1, url=url, overlap=overlap,
        )
    )  # fmt: skip
    workdir = tmp / f"run_arm{overlap}_r{rnd}"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "srpo_jax.main", f"--config={config}", f"--workdir={workdir}"]
    out = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {LEARNER_CORE}),
    )  # fmt: skip
    if out.returncode:
        sys.exit(f"error: overlap={overlap} round {rnd} failed:\n{out.stdout[-4000:]}")
    records = [r for r in read_metrics(workdir / "metrics.jsonl") if "time/step_s" in r]
    # The last step of an overlapped run has no next rollout to generate beside it: dropped.
    kept = records[args.warmup : args.warmup + args.steps]
    return {"overlap": overlap, "steps": kept, "load": os.getloadavg()[0]}


def summarize(runs: list[dict]) -> dict[int, dict]:
    """Per arm: median step seconds with min and max, each pool's busy fraction (its seconds
    summed over the kept steps / their summed step seconds), mean load, profile medians."""
    out = {}
    for arm in sorted({r["overlap"] for r in runs}):
        steps = [s for r in runs if r["overlap"] == arm for s in r["steps"]]
        step_s = [s["time/step_s"] for s in steps]
        wall = sum(step_s)
        prof = {}
        for k in PROFILE_KEYS:
            vals = [s[f"time/{k}"] for s in steps if f"time/{k}" in s]
            prof[k] = statistics.median(vals) if vals else float("nan")
        out[arm] = {
            "n": len(steps), "median": statistics.median(step_s), "min": min(step_s),
            "max": max(step_s), "pool_busy": sum(s["time/rollout_s"] for s in steps) / wall,
            "learner_busy": sum(s["time/learner_s"] for s in steps) / wall,
            "load": statistics.mean(r["load"] for r in runs if r["overlap"] == arm),
            "profile": prof,
        }  # fmt: skip
    return out


def print_tables(summary: dict[int, dict]) -> None:
    base = summary.get(0, {}).get("median")
    print("| overlap | steps kept | s / step, median [min-max] | vs overlap=0 | rollout pool "
          "busy | learner busy | load avg (1 min) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for arm, s in summary.items():
        ratio = f"{s['median'] / base:.2f}x" if base else "-"
        print(f"| {arm} | {s['n']} | {s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}] | "
              f"{ratio} | {100 * s['pool_busy']:.0f}% | {100 * s['learner_busy']:.0f}% | "
              f"{s['load']:.1f} |")  # fmt: skip
    print("\nPer-step profile, medians in seconds (time/* of metrics.jsonl):\n")
    print("| overlap | " + " | ".join(PROFILE_KEYS) + " |")
    print("|---|" + "---|" * len(PROFILE_KEYS))
    for arm, s in summary.items():
        cells = " | ".join("-" if v != v else f"{v:.3f}" for v in s["profile"].values())
        print(f"| {arm} | {cells} |")


# ---------------------------------------------------------------- the paper-setting estimate
@dataclasses.dataclass(frozen=True)
class PaperSetting:
    """The assumptions of the estimate (each pool: one node of 8 H20)."""

    rows: int = 256  # 32 prompts x 8 rollouts (SPEC 10)
    prompt_len: int = 300  # mean prompt tokens (assumed)
    response_len: int = 1000  # mean response tokens (assumed)
    longest_response: int = 4000  # the step's longest response (assumed): decode's floor
    teacher_frac: float = 0.5  # rows routed to SDPO, each with a teacher pass (assumed)
    learner_mfu: float = 0.40  # of the H20's 148 TFLOP/s dense bf16 (assumed)
    rollout_mfu: float = 0.20  # decode is memory-bound (assumed)
    hbm_eff: float = 0.6  # fraction of 4.0 TB/s a one-GPU replica reads weights at (assumed)
    sync_s: float = 1.49  # NCCL push of 16.4 GB at 100 Gb/s (docs/performance.md estimate)
    chips: int = 8
    # The plan's compiled count for the worst-case batch (docs/scale.md): 4.73e17 FLOPs per
    # node for 256 student rows of 2048 + 8192 and 256 teacher rows of 24576 tokens.
    plan_flops: float = 4.73e17
    plan_student_len: int = 10240
    plan_teacher_len: int = 24576


def _flops(cfg, tokens: float, length: float, passes: int) -> float:
    """Matmul FLOPs of `passes` forward-equivalents over `tokens` tokens of sequences of
    `length` (causal attention: mean context length / 2)."""
    mm = 2 * (cfg.num_layers * _layer_params(cfg) + cfg.vocab_size * cfg.hidden_size)
    attn = 4 * (length / 2) * cfg.num_heads * cfg.head_dim * cfg.num_layers
    return passes * tokens * (mm + attn)


def _layer_params(cfg) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    return h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * h * cfg.intermediate_size


def _learner_flops(cfg, s: PaperSetting, student_len, teacher_len, teacher_rows) -> float:
    # student: forward, backward (2x), remat's second forward; teacher: forward only.
    return _flops(cfg, s.rows * student_len, student_len, 4) + _flops(
        cfg, teacher_rows * teacher_len, teacher_len, 1
    )


def estimate(s: PaperSetting) -> dict:
    from srpo_jax.aot.chips import CHIPS
    from srpo_jax.model.config import PRESETS

    cfg, chip = PRESETS["qwen3_8b"](), CHIPS["h20"]
    node = s.chips * chip.peak_bf16_flops
    worst = _learner_flops(cfg, s, s.plan_student_len, s.plan_teacher_len, s.rows)
    scale = s.plan_flops / worst  # what the compiled step adds to the analytic count
    student = s.prompt_len + s.response_len
    teacher = s.prompt_len + 2 * s.response_len  # the prompt, a sibling's answer, the response
    learn_flops = scale * _learner_flops(cfg, s, student, teacher, s.teacher_frac * s.rows)
    learn_s = learn_flops / (node * s.learner_mfu)
    roll_flops = _flops(cfg, s.rows * s.response_len, student, 1) + _flops(
        cfg, s.rows / 8 * s.prompt_len, s.prompt_len, 1
    )  # a prompt's 8 rollouts share its prefill (radix cache)
    weight_bytes = 2 * (cfg.num_layers * _layer_params(cfg) + 2 * cfg.vocab_size * cfg.hidden_size)
    floor_s = s.longest_response * weight_bytes / (chip.hbm_bytes_per_s * s.hbm_eff)
    roll_s = max(roll_flops / (node * s.rollout_mfu), floor_s)
    return {"scale": scale, "learn_tflop": learn_flops / 1e12, "learn_s": learn_s,
            "roll_tflop": roll_flops / 1e12, "floor_s": floor_s, "roll_s": roll_s,
            "serial_s": roll_s + learn_s + s.sync_s,
            "overlap_s": max(roll_s, learn_s) + s.sync_s}  # fmt: skip


def print_estimate(settings: list[PaperSetting]) -> None:
    print("\nESTIMATE, not a measurement: Qwen3-8B SRPO, one node of 8 x H20 per pool\n")
    print("| mean prompt / response / longest | learner TFLOP (plan scale) | learn s | "
          "rollout TFLOP | rollout s (decode floor) | sync s | step s, overlap=0 | "
          "overlap=1 | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for s in settings:
        e = estimate(s)
        print(f"| {s.prompt_len} / {s.response_len} / {s.longest_response} | "
              f"{e['learn_tflop']:.0f} (x{e['scale']:.2f}) | {e['learn_s']:.1f} | "
              f"{e['roll_tflop']:.0f} | {e['roll_s']:.1f} ({e['floor_s']:.1f}) | {s.sync_s} | "
              f"{e['serial_s']:.1f} | {e['overlap_s']:.1f} | "
              f"{e['overlap_s'] / e['serial_s']:.2f}x |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="kept steps per run")
    p.add_argument("--warmup", type=int, default=2, help="dropped steps per run (compiles)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--response_len", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512, help="model width (MLP 3x)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--arms", default="0,1")
    p.add_argument("--estimate_only", action="store_true")
    args = p.parse_args()
    if not args.estimate_only:
        measure(args)
    base = PaperSetting()
    print_estimate([dataclasses.replace(base, response_len=r, longest_response=4 * r)
                    for r in (500, 1000, 2000)])  # fmt: skip


def measure(args) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("error: the benchmark needs 2 CPU cores (one per pool)")
    from srpo_jax.data.tokenizer import build_tiny_tokenizer

    arms = [int(a) for a in args.arms.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_overlap_") as d:
        tmp = pathlib.Path(d)
        build_tiny_tokenizer(tmp / "tok")  # 512 ids: the checkpoint's vocabulary
        server, ckpt = _start_server(args, tmp)
        try:
            runs = []
            for rnd in range(args.rounds):
                for arm in arms if rnd % 2 == 0 else arms[::-1]:
                    runs.append(_run_arm(args, tmp, server.url, ckpt, arm, rnd))
                    print(f"round {rnd} overlap={arm}: done, load {runs[-1]['load']:.1f}",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            server.stop()
    print(f"\n{args.prompts} prompts x {args.group} rollouts, responses of "
          f"{args.response_len} tokens, {args.rounds} rounds of {args.warmup} + {args.steps} "
          "steps per arm\n")  # fmt: skip
    print_tables(summarize(runs))


if __name__ == "__main__":
    main()
