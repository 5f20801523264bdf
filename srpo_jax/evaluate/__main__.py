"""avg@k and maj@k of a run's checkpoint, or of an HF model, on the test splits.

    python -m srpo_jax.evaluate --workdir=runs/x [--step=latest|best|N] --k=16 --out=runs/x/eval
    python -m srpo_jax.evaluate --config=configs/qwen3_8b_chem.py --hf_path=/models/Qwen3-8B \
        --k=16 --out=eval/qwen3_8b [--tasks=chem,phys,bio,materials]

Prints, per benchmark and over all their questions pooled, avg@k (the mean reward of k
samples per question) and maj@k (the reward of each question's majority answer), each
with a 95% bootstrap interval over questions, and writes them to --out/evaluation.json.

What is evaluated: --workdir, a training run's checkpoint (its architecture, tokenizer and
config from the run's workdir; --step as in srpo_jax.export), or --hf_path, an HF Qwen3
directory (before any training, or an export). Exactly one of the two. How: the config
(--config, or with --workdir the run's own config.json when --config is not given):
data (--tasks picks other benchmarks than data.task), eval (temperature, top_p,
max_examples; --k sets eval.num_samples), the sampling seed train.seed, the mesh, and
the rollout engine: the embedded JAX engine, or SGLang servers, running (rollout.sglang.urls)
or launched (launch_command), which get the weights pushed as in training. The scoring is
the trainer's own (trainer/evaluation.py) with the run's seed and step, so a checkpoint
gets exactly the avg@k its run logged at that step.

Bad input (both or neither of --workdir and --hf_path, an --out that exists and is not
empty without --force, a bad flag, a step never checkpointed) is one `error:` line and
exit code 2, with nothing written to --out.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from srpo_jax import config as config_lib
from srpo_jax import jax_startup, log_levels
from srpo_jax.cli import fail, last_error_line, parse_flags
from srpo_jax.data.config import TASKS
from srpo_jax.export.workdir import STEP_CHOICES, RunDir, RunDirError, check_out_dir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir (its checkpoint).")
_STEP = flags.DEFINE_string("step", "latest", f"With --workdir, the checkpoint: {STEP_CHOICES}.")
_HF_PATH = flags.DEFINE_string("hf_path", None, "An HF Qwen3 directory to evaluate instead.")
_K = flags.DEFINE_integer("k", None, "Samples per question (eval.num_samples).", lower_bound=1)
_TASKS = flags.DEFINE_list("tasks", None, f"Benchmarks (default data.task): {', '.join(TASKS)}.")
_OUT = flags.DEFINE_string("out", None, "Directory to write evaluation.json to.")
_FORCE = flags.DEFINE_bool("force", False, "Replace an existing non-empty --out.")

RESULTS_FILE = "evaluation.json"
EXIT_ROLLOUT_FAILED = 1


def _checked_flags() -> tuple[pathlib.Path, RunDir | None]:
    """--out and the model source, checked before anything is loaded or written."""
    if bool(_WORKDIR.value) == bool(_HF_PATH.value):
        both = "both --workdir and --hf_path given" if _WORKDIR.value else "neither given"
        fail(f"evaluate takes exactly one of --workdir (a run) or --hf_path (an HF model): {both}")
    if not _OUT.value:
        fail("--out is required (the directory to write evaluation.json to)")
    if _HF_PATH.value and _CONFIG.value is None:
        fail("--config is required with --hf_path (data, eval and rollout settings)")
    if _HF_PATH.value and flags.FLAGS["step"].present:
        fail("--step picks a checkpoint of --workdir; an --hf_path model has none")
    out = pathlib.Path(_OUT.value)
    try:
        check_out_dir(out, _FORCE.value)
        rundir = RunDir.open(_WORKDIR.value) if _WORKDIR.value else None
    except RunDirError as e:
        fail(str(e))
    return out, rundir


def _config(rundir: RunDir | None) -> config_lib.Config:
    """The config (the run's own without --config), with --k and --tasks checked."""
    try:
        if _CONFIG.value is None:
            cfg = rundir.cfg
        else:
            if _HF_PATH.value:  # the model to evaluate: what model.hf_path names in training
                _CONFIG.value.model.hf_path = _HF_PATH.value
            cfg = config_lib.from_config_dict(_CONFIG.value)
        if _K.value is not None:
            cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_samples=_K.value))
    except (config_lib.ConfigError, OSError) as e:
        fail(last_error_line(str(e)))
    unknown = [t for t in _TASKS.value or () if t not in TASKS]
    if unknown:
        fail(f"--tasks: unknown benchmark {unknown[0]!r}; known: {', '.join(TASKS)}")
    return cfg


def _model(cfg: config_lib.Config, rundir: RunDir | None, mesh):
    """(model config, params on `mesh`, tokenizer, the step the sampling noise folds in)."""
    from flax import nnx

    from srpo_jax.data import tokenizer as tok_lib
    from srpo_jax.model import hf_io

    if rundir is not None:
        step = rundir.choose_step(_STEP.value)
        model_cfg, tokenizer = rundir.architecture(), rundir.tokenizer()
        return model_cfg, rundir.restore_tree(step, "policy", mesh), tokenizer, step
    hf_path = cfg.model.hf_path  # --hf_path (_config)
    try:
        model_cfg = cfg.model.architecture()
        tokenizer = tok_lib.load_tokenizer(cfg.tokenizer.path or hf_path)
    except FileNotFoundError as e:
        raise RunDirError(f"--hf_path={hf_path}: {e}") from None
    model = hf_io.load_hf(hf_path, config=model_cfg, mesh=mesh)
    return model_cfg, nnx.split(model, nnx.Param)[1], tokenizer, 0


def evaluate(cfg: config_lib.Config, rundir: RunDir | None, out: pathlib.Path) -> dict:
    """Scores every benchmark; returns what evaluation.json holds."""
    from srpo_jax.evaluate import scores
    from srpo_jax.sharding import make_mesh
    from srpo_jax.trainer import setup as trainer_setup

    config_lib.check_mesh(cfg, jax_startup.device_count())
    mesh = make_mesh(cfg.mesh)
    model_cfg, params, tokenizer, step = _model(cfg, rundir, mesh)
    splits = {t: scores.test_set(cfg, t, tokenizer) for t in _TASKS.value or [cfg.data.task]}
    # The engine's scratch (an SGLang weight export) goes to --out, never to the run.
    out.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id
    engine = trainer_setup.make_engine(cfg, model_cfg, params, mesh, pad_id, out, step)
    try:
        per_task = {
            t: scores.score(cfg, prompts, engine, tokenizer, step=step)
            for t, prompts in splits.items()
        }
    finally:
        engine.close()
    source = {"workdir": str(rundir.path), "step": step} if rundir else {"hf_path": _HF_PATH.value}
    k, seed = cfg.eval.num_samples, cfg.train.seed
    return {"model": source, "k": k, "seed": seed, "results": scores.summaries(per_task, seed)}


def main(argv: list[str]) -> None:
    log_levels.apply(flags.FLAGS.verbosity)
    if len(argv) > 1:
        fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    out, rundir = _checked_flags()
    cfg = _config(rundir)
    jax_startup.import_jax()
    from srpo_jax.data.datasets import DataError
    from srpo_jax.evaluate.scores import table
    from srpo_jax.model.hf_io import HFCheckpointError
    from srpo_jax.rollout.engine import RolloutError

    try:
        report = evaluate(cfg, rundir, out)
    except (RunDirError, config_lib.ConfigError, DataError, HFCheckpointError) as e:
        fail(str(e))
    except RolloutError as e:  # the engine failed: not bad input
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ROLLOUT_FAILED)
    (out / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"], report["k"]))
    print(f"written to {out / RESULTS_FILE}", flush=True)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
