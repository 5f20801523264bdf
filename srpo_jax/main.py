"""Command-line entry point: parse the config, validate it, start the trainer.

    python -m srpo_jax.main --config=configs/demo.py:method=srpo --workdir=/tmp/srpo_demo
    python -m srpo_jax.main --config=configs/qwen3_8b_chem.py:method=grpo \
        --config.model.hf_path=/models/Qwen3-8B --config.train.num_steps=200 --workdir=runs/x

Any invalid value or unknown key fails before anything heavy, with one line naming the
dotted key and the bad value and exit code 2 (no traceback). Multi-host: pass
--coordinator_address/--num_processes/--process_id, or run under SLURM, where
jax.distributed.initialize reads them from the environment.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from srpo_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

EXIT_CONFIG_ERROR = 2
EXIT_TRAINING_ABORTED = 1


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def _unknown_override(argv: list[str]) -> str | None:
    """Names the first --config.a.b=v override whose key the loaded config lacks."""
    # The override failed while the config flag was being parsed, so FLAGS.config is not set
    # yet: load the file again (it just loaded fine) to compare keys against.
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("srpo_config_hint", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        node = module.get_config(arg) if arg else module.get_config()
    except Exception:  # the config file itself is broken: nothing to compare against
        return None
    for flag in argv[1:]:
        if not flag.startswith("--config."):
            continue
        parts = flag[len("--config.") :].split("=", 1)[0].split(".")
        here = node
        for depth, part in enumerate(parts):
            if not hasattr(here, "keys") or part not in here:
                known = list(here.keys()) if hasattr(here, "keys") else []
                prefix = ".".join(["config", *parts[:depth]])
                close = difflib.get_close_matches(part, known, n=2)
                hint = (
                    f" (did you mean {', '.join(f'{prefix}.{c}' for c in close)}?)" if close else ""
                )
                return f"unknown config key config.{'.'.join(parts)}{hint}"
            here = here[part]
    return None


def _last_error_line(message: str) -> str:
    """A config file that raised while loading: keep its last 'SomeError: why' line only."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        match = re.match(r"^[\w.]*(?:Error|Exception): (.*)$", line)
        if match:
            return match.group(1)
    if len(lines) > 1 and "No such file" in message:
        return next(ln for ln in lines if "No such file" in ln)
    return message.strip()


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config override exits 2 with one line, no usage dump."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, config_lib.ConfigError, AttributeError, KeyError, TypeError) as e:
        # Raised while loading the config file or applying --config.a.b=v overrides.
        _fail(_unknown_override(argv) or _last_error_line(str(e)))


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad user input found at run time (a data file, an HF directory, a
    checkpoint of another model): one line and exit 2, like a config error. Everything else
    keeps its traceback, since it is a bug. Imported here: these modules pull in JAX."""
    from srpo_jax.checkpoint import CheckpointMismatchError
    from srpo_jax.data.datasets import DataError
    from srpo_jax.model.hf_io import HFCheckpointError

    return (config_lib.ConfigError, DataError, HFCheckpointError, CheckpointMismatchError)


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
    if len(argv) > 1:
        _fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        _fail("--config is required, e.g. --config=configs/demo.py:method=srpo")
    try:
        cfg = config_lib.from_config_dict(_CONFIG.value)
    except (config_lib.ConfigError, OSError) as e:  # OSError: the config file failed to load
        _fail(_last_error_line(str(e)))
    resolved = json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True)
    if _PRINT_CONFIG.value:
        print(resolved)
        return
    if _WORKDIR.value is None:
        _fail("--workdir is required (checkpoints and metrics go there)")

    _init_distributed()
    import jax

    try:
        config_lib.check_mesh(cfg, jax.device_count())
    except config_lib.ConfigError as e:
        _fail(str(e))
    if jax.process_index() == 0:
        print(f"resolved config:\n{resolved}", flush=True)

    try:  # imported lazily: the CLI stays usable (config checks) while the trainer is absent
        import srpo_jax.trainer as trainer
    except ModuleNotFoundError as e:
        if e.name != "srpo_jax.trainer":
            raise
        print(
            "error: srpo_jax.trainer is missing: the config is valid, nothing to run",
            file=sys.stderr,
        )
        sys.exit(1)
    try:
        trainer.run(cfg, _WORKDIR.value)
    except _input_errors() as e:
        _fail(str(e))
    except (trainer.TrainingAborted, trainer.RolloutError) as e:
        # The run stopped for a reason the message explains (non-finite steps, engine down):
        # one line, not a traceback; the last good state is in the checkpoint.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_TRAINING_ABORTED)


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
