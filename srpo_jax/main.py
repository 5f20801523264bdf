"""Command-line entry point: parse the config, validate it, start the trainer.

    python -m srpo_jax.main --config=configs/demo.py:method=srpo --workdir=/tmp/srpo_demo
    python -m srpo_jax.main --config=configs/qwen3_8b_chem.py:method=grpo \
        --config.model.hf_path=/models/Qwen3-8B --config.train.num_steps=200 --workdir=runs/x

The console shows a one-screen summary of the config (all of it goes to
workdir/config.json; --print_config prints it and exits), a progress bar (one plain line
every --log_every steps when stdout is not a terminal) and an end-of-run summary. Library
INFO logs (orbax, jax's backend probing) are hidden; --verbosity=1 shows them, and warnings
always show.

The config tree imports no JAX, so --print_config and a bad flag finish without loading
it; JAX starts (quietly, srpo_jax/jax_startup.py) once the run does. Any invalid value or
unknown key fails before anything heavy, with one line naming the dotted key and the bad
value and exit code 2 (no traceback). Multi-host: pass
--coordinator_address/--num_processes/--process_id, or run under SLURM, where
jax.distributed.initialize reads them from the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from srpo_jax import config as config_lib
from srpo_jax import jax_startup, log_levels
from srpo_jax.cli import fail as _fail
from srpo_jax.cli import last_error_line as _last_error_line
from srpo_jax.cli import parse_flags as _parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
_LOG_EVERY = flags.DEFINE_integer(
    "log_every",
    None,
    "Steps between progress lines when stdout is not a terminal (sets config.log.log_every).",
    lower_bound=1,
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

EXIT_TRAINING_ABORTED = 1


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad user input found at run time (a data file, an HF directory, a
    checkpoint of another model): one line and exit 2, like a config error. Everything else
    keeps its traceback, since it is a bug. Imported here: these modules pull in JAX."""
    from srpo_jax.data.datasets import DataError
    from srpo_jax.data.tokenizer import TokenizerError
    from srpo_jax.model.hf_io import HFCheckpointError
    from srpo_jax.trainer.checkpoint import CheckpointMismatchError
    from srpo_jax.trainer.metrics import MetricsError

    errors = (config_lib.ConfigError, DataError, HFCheckpointError, CheckpointMismatchError)
    return (*errors, MetricsError, TokenizerError)


def _check_workdir(path: str) -> None:
    """--workdir must be a folder, or creatable: caught here, before JAX starts."""
    wd = os.path.abspath(path)
    if os.path.exists(wd) and not os.path.isdir(wd):
        _fail(f"--workdir {path} is not a directory")
    parent = wd
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"--workdir {path} cannot be created: {parent} is not a writable directory")


def _init_distributed() -> None:
    """Multi-host start-up; must run before any other JAX call touches the devices."""
    import jax

    explicit = _COORDINATOR.value is not None or _NUM_PROCESSES.value is not None
    if explicit:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()  # cluster auto-detection reads the SLURM variables


def main(argv: list[str]) -> None:
    log_levels.apply(flags.FLAGS.verbosity)
    if len(argv) > 1:
        _fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None and flags.FLAGS["config"].present:
        _fail(f"config file {flags.FLAGS['config'].config_filename}: get_config() returned None")
    if _CONFIG.value is None:
        _fail("--config is required, e.g. --config=configs/demo.py:method=srpo")
    try:
        cfg = config_lib.from_config_dict(_CONFIG.value)
    except (config_lib.ConfigError, OSError) as e:  # OSError: the config file failed to load
        _fail(_last_error_line(str(e)))
    if _LOG_EVERY.value is not None:
        cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, log_every=_LOG_EVERY.value))
    if _PRINT_CONFIG.value:
        print(json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True))
        return
    if _WORKDIR.value is None:
        _fail("--workdir is required (checkpoints and metrics go there)")
    _check_workdir(_WORKDIR.value)

    # JAX only now that there is a run: --print_config and config errors never load it.
    jax_startup.import_jax()
    _init_distributed()
    try:
        config_lib.check_mesh(cfg, jax_startup.device_count())
    except config_lib.ConfigError as e:
        _fail(str(e))

    # Imported here, not at the top: --print_config and the config checks import no jax.
    import srpo_jax.trainer.setup as trainer

    try:
        trainer.run(cfg, _WORKDIR.value)
    except _input_errors() as e:
        _fail(str(e))
    except (trainer.TrainingAborted, trainer.RolloutError, trainer.DiskFullError) as e:
        # The run stopped for a reason the message explains (non-finite steps, engine down,
        # a full disk): one line, not a traceback; the last good state is in the checkpoint.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_TRAINING_ABORTED)


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
