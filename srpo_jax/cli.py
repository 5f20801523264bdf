"""Command-line error handling shared by the entry points (`main.py`, `aot/plan.py`).

A bad flag, a config file that raises, or a --config.a.b=v override of a key the config
lacks ends the program with one line on stderr naming the bad thing and exit code 2: no
traceback and no absl usage dump.
"""

from __future__ import annotations

import difflib
import re
import sys

from absl import flags

from srpo_jax import config as config_lib

EXIT_CONFIG_ERROR = 2


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def unknown_override(argv: list[str]) -> str | None:
    """Names the first --config.a.b=v override whose key the loaded config lacks."""
    # The override failed while the config flag was being parsed, so FLAGS.config is not set
    # yet: load the file again (it just loaded fine) to compare keys against.
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    try:
        node = config_lib.load_config_file(spec)
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


def last_error_line(message: str) -> str:
    """A config file that raised while loading: keep its last 'SomeError: why' line only."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    os_error = re.search(r"\[Errno \d+\] ([^:]+): '(.*)'", message)
    if os_error:  # a config file that cannot be read (missing, a directory)
        return f"cannot read config file {os_error[2]!r}: {os_error[1]}"
    for line in reversed(lines):
        match = re.match(r"^[\w.]*(?:Error|Exception): (.*)$", line)
        if match:
            return match.group(1)
    if len(lines) > 1 and "No such file" in message:
        return next(ln for ln in lines if "No such file" in ln)
    return message.strip()


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config override exits 2 with one line, no usage dump."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, config_lib.ConfigError, AttributeError, KeyError, TypeError, OSError) as e:
        # Raised while loading the config file or applying --config.a.b=v overrides (OSError:
        # an override applied to a config file that failed to load, e.g. a missing one).
        if isinstance(e, AttributeError) and "'get_config'" in str(e):
            spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
            fail(f"config file {spec.partition(':')[0]} defines no get_config()")
        fail(unknown_override(argv) or last_error_line(str(e)))
    except SyntaxError as e:  # the config file is not valid Python
        fail(f"config file {e.filename} line {e.lineno}: {e.msg}")
