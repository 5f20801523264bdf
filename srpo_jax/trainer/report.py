"""The run's two summaries: what is about to run (start) and what happened (end).

At the start the trainer writes the whole resolved config to workdir/config.json (the file
to diff two runs by, or to rerun from) and prints one screen instead of it: model, method,
mesh, steps, data counts and where the outputs go. `--print_config` still prints all of it.

At the end it prints a table built from metrics.jsonl, the record of truth, so a resumed
run's summary covers the whole run and not only the last session: first, best and last
evaluation, steps, the time each phase of this session took, skipped updates, and the paths
of the metrics, curves and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

from srpo_jax import disk
from srpo_jax.config import Config, to_dict
from srpo_jax.trainer.progress import format_duration

CONFIG_FILENAME = "config.json"
_WIDTH = 12  # label column


def write_config(cfg: Config, workdir: str | os.PathLike) -> pathlib.Path:
    """workdir/config.json: the resolved config, replaced atomically (a resume rewrites it)."""
    path = pathlib.Path(workdir) / CONFIG_FILENAME
    text = json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n"
    # A full disk raises disk.DiskFullError naming the file and its bytes; the old file stays.
    return disk.write_atomic(path, text.encode())


def _rows(title: str, rows: Sequence[tuple[str, str]]) -> str:
    rule = f"── {title} " + "─" * max(0, 64 - len(title))
    return "\n".join([rule, *(f"{label:<{_WIDTH}} {text}" for label, text in rows)])


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def output_paths(cfg: Config, workdir: str | os.PathLike) -> list[tuple[str, str]]:
    wd = pathlib.Path(workdir)
    rows = [
        ("metrics", str(wd / "metrics.jsonl")),
        ("curves", str(wd / "curves.png")),
        ("checkpoints", str(wd / "checkpoints")),
        ("config", str(wd / CONFIG_FILENAME)),
    ]
    if cfg.log.tensorboard:
        rows.append(("tensorboard", str(wd / "tensorboard")))
    if cfg.log.wandb:
        rows.append(("wandb", f"{wd / 'wandb'} (project {cfg.log.wandb_project})"))
    return rows


def outputs_line(cfg: Config, workdir: str | os.PathLike) -> str:
    """Where the outputs go, in one line (the end-of-run summary lists each path)."""
    names = ["metrics.jsonl", "curves.png", "checkpoints/", CONFIG_FILENAME]
    names += ["tensorboard/"] if cfg.log.tensorboard else []
    names += ["wandb/"] if cfg.log.wandb else []
    return f"{workdir}: {', '.join(names)}"


def config_summary(
    cfg: Config, workdir: str | os.PathLike, model_cfg, params, train_set, test_set
) -> str:
    """One screen: what will run, on what, with which data, writing where. The data sets
    are datasets.PromptSet (len() prompts kept, .num_filtered dropped as too long)."""
    import jax

    return _config_rows(
        cfg,
        workdir,
        model_cfg=model_cfg,
        num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),  # arrays or abstract
        devices=jax.devices(),
        data_counts={
            "train": len(train_set),
            "train_filtered": train_set.num_filtered,
            "test": len(test_set),
            "test_filtered": test_set.num_filtered,
        },
    )


def _config_rows(
    cfg: Config,
    workdir: str | os.PathLike,
    *,
    model_cfg,
    num_params: int,
    devices: Sequence,
    data_counts: Mapping[str, int],
) -> str:
    a, t, m = cfg.algo, cfg.train, cfg.mesh
    weights = cfg.model.hf_path or "random init"
    model = (
        f"{cfg.model.preset or 'from config.json'}: {model_cfg.num_layers} layers, hidden "
        f"{model_cfg.hidden_size}, vocab {model_cfg.vocab_size}; {_count(num_params)} params "
        f"({weights}); compute {cfg.model.dtype}"
    )
    method = (
        f"{a.method}: lr {cfg.optim.lr:g}, {t.prompts_per_step} prompts x {a.group_size} "
        f"rollouts per step, {cfg.num_updates_per_step} update(s) per step"
    )
    platform = devices[0].platform if devices else "?"
    mesh = (
        f"data {m.data} x fsdp {m.fsdp} x tensor {m.tensor} on {len(devices)} {platform} device(s)"
    )
    steps = f"{t.num_steps} RL steps"
    if cfg.warmup.steps:
        steps = f"{cfg.warmup.steps} warm-up + {steps}"
    every = cfg.eval.every_steps
    steps += f"; eval every {every} (avg@{cfg.eval.num_samples})" if every else "; no eval"
    ckpt = cfg.checkpoint.every_steps
    steps += f"; checkpoint every {ckpt}" if ckpt else "; checkpoint at the end"
    if t.time_budget_hours:
        steps += f"; budget {t.time_budget_hours:g} h"
    data = (
        f"{cfg.data.task}: {data_counts['train']} train prompts "
        f"({data_counts['train_filtered']} filtered as too long), {data_counts['test']} test "
        f"({data_counts['test_filtered']} filtered)"
    )
    rollout = (
        f"{cfg.rollout.engine} engine, temperature {cfg.rollout.temperature:g}, up to "
        f"{cfg.data.max_response_len} new tokens"
    )
    rows = [
        ("method", method),
        ("model", model),
        ("mesh", mesh),
        ("steps", steps),
        ("data", data),
        ("rollout", rollout),
        ("outputs", outputs_line(cfg, workdir)),
    ]
    return _rows("srpo_jax run", rows)


def _eval_row(records: Sequence[dict], key: str) -> str | None:
    points = [(r["step"], r[key]) for r in records if key in r]
    if not points:
        return None
    best = max(points, key=lambda p: p[1])
    return "   ".join(
        f"{name} {v:.3f} (step {step})"
        for name, (step, v) in (("first", points[0]), ("best", best), ("last", points[-1]))
    )


def run_summary(
    cfg: Config,
    workdir: str | os.PathLike,
    records: Sequence[dict],
    *,
    phase_seconds: Mapping[str, float],
    start_step: int,
) -> str:
    """The end-of-run table from metrics.jsonl records and this session's phase times."""
    k = cfg.eval.num_samples
    rows = []
    for key, label in (("eval/avg_at_k", f"eval avg@{k}"), ("eval/maj_at_k", f"eval maj@{k}")):
        text = _eval_row(records, key)
        if text is not None:
            rows.append((label, text))
    steps_done = [r for r in records if "time/step_s" in r]
    last = steps_done[-1] if steps_done else {}
    final_step = last.get("step", start_step)
    steps = f"{final_step} of {cfg.train.num_steps} RL steps"
    if start_step:
        steps += f" (this session: {start_step} -> {final_step})"
    rows.append(("steps", steps))
    phases = " | ".join(f"{name} {format_duration(s)}" for name, s in phase_seconds.items())
    eval_s = sum(r.get("time/eval_s", 0.0) for r in records if r["step"] >= start_step)
    rows.append(("time", f"{phases} | total {format_duration(sum(phase_seconds.values()))}"))
    if "time/train_elapsed_s" in last:
        trained = format_duration(last["time/train_elapsed_s"])
        evaluated = format_duration(eval_s)
        rows.append(
            ("", f"training {trained} (all sessions, evaluation excluded); evaluation {evaluated}")
        )
    skipped = int(last.get("skipped_updates_total", 0))
    rows.append(("skipped", f"{skipped} update(s) with a non-finite gradient norm"))
    rows.extend(output_paths(cfg, workdir))
    return _rows("run summary", rows)
