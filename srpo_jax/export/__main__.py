"""A training run's checkpoint out as a Hugging Face Qwen3 checkpoint.

    python -m srpo_jax.export --workdir=runs/x --out=runs/x/hf [--step=latest|best|N] \
        [--which=policy|teacher] [--dtype=bfloat16] [--force]

Writes the policy (or its EMA self-teacher) of the chosen checkpoint to --out as
transformers writes a Qwen3: model.safetensors (sharded with an index past 4 GiB),
config.json (the architecture the run trained), the run's tokenizer (saved as the run
loaded it, chat template included) and model.hf_path's generation_config.json when there
was one, plus srpo_export.json (which run, step, tree and dtype it came from). The result
loads with AutoModelForCausalLM.from_pretrained and serves with SGLang.

--step: latest (default), best (the step with the highest eval avg@k in metrics.jsonl,
which must have a checkpoint) or a step number. It runs in one process on the CPU for a
run trained on any mesh: the checkpoint is restored into the learner's abstract state laid
out on one CPU device, and only the chosen tree is read (never the optimizer's moments).

Bad input (no checkpoint, a step never checkpointed, an --out that exists and is not empty
without --force, an unknown flag) is one `error:` line and exit code 2, with nothing
written to --out. The export is written beside --out and renamed into place, so an
interrupted export never leaves half a checkpoint there.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from absl import app, flags

from srpo_jax import jax_startup, log_levels
from srpo_jax.cli import fail, parse_flags
from srpo_jax.export.workdir import STEP_CHOICES, WHICH, RunDir, RunDirError, check_out_dir

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_OUT = flags.DEFINE_string("out", None, "Directory to write the HF checkpoint to.")
_STEP = flags.DEFINE_string("step", "latest", f"Which checkpoint: {STEP_CHOICES}.")
_WHICH = flags.DEFINE_enum("which", "policy", WHICH, "The policy or its EMA teacher.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "bfloat16", ["bfloat16", "float16", "float32"], "dtype of the written weights."
)
_FORCE = flags.DEFINE_bool("force", False, "Replace an existing non-empty --out.")

EXPORT_RECORD = "srpo_export.json"


def _write(run: RunDir, step: int, tree, dest: pathlib.Path, tokenizer) -> None:
    """The HF checkpoint of `tree` into the new directory `dest`."""
    from srpo_jax.model import hf_io

    hf_io.save_hf_params(tree, run.architecture(), dest, dtype=_DTYPE.value)
    tokenizer.save_pretrained(str(dest))  # as the run loaded it: its chat template included
    model_dir = run.model_dir()
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        shutil.copy2(model_dir / "generation_config.json", dest / "generation_config.json")
    record = {
        "workdir": str(run.path.absolute()),
        "step": step,
        "which": _WHICH.value,
        "dtype": _DTYPE.value,
    }
    (dest / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def export(run: RunDir, step: int, out: pathlib.Path) -> None:
    """Writes checkpoint `step`'s tree of `run` to `out` (new, empty, or to be replaced)."""
    import jax

    from srpo_jax.sharding import MeshConfig, make_mesh

    run.architecture()  # errors first: before any weight is read or anything written
    tokenizer = run.tokenizer()
    # One CPU device whatever mesh the run trained on: the host has the memory for one tree.
    mesh = make_mesh(MeshConfig(), jax.devices("cpu")[:1])
    tree = run.restore_tree(step, _WHICH.value, mesh)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write(run, step, tree, partial, tokenizer)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)  # empty, or --force
    partial.rename(out)


def main(argv: list[str]) -> None:
    log_levels.apply(flags.FLAGS.verbosity)
    if len(argv) > 1:
        fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        fail("--workdir is required (the training run to export)")
    if not _OUT.value:
        fail("--out is required (the directory to write the HF checkpoint to)")
    out = pathlib.Path(_OUT.value)
    try:
        check_out_dir(out, _FORCE.value)
        rundir = RunDir.open(_WORKDIR.value)
        step = rundir.choose_step(_STEP.value)
        jax_startup.import_jax()  # quietly, before the checkpoint code imports it
        jax_startup.device_count()  # the backend starts here, its probe noise filtered
        export(rundir, step, out)
    except RunDirError as e:
        fail(str(e))
    print(f"exported the {_WHICH.value} of step {step} of {rundir.path} to {out} ({_DTYPE.value})")
    sys.stdout.flush()


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
