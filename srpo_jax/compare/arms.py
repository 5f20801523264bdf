"""Arms of a comparison: a method, optionally with config overrides of its own.

    srpo                          the method as its config file builds it
    srpo@rollout.overlap=1        the same, with rollout.overlap set to 1 for its runs only
    srpo@rollout.overlap=1@a.b=2  several overrides

The label is the arm's name everywhere (run directories, table rows, curves), so the
reports need no separate key. The overridden values keep their one home in the config
record they configure: an arm only sets them, as `--config.key=value` does for every run.
"""

from __future__ import annotations

import ast
import dataclasses

SEP = "@"


@dataclasses.dataclass(frozen=True)
class Arm:
    method: str
    overrides: tuple[tuple[str, object], ...] = ()  # (dotted key, value), applied in order


def parse_value(raw: str) -> object:
    """A Python literal (1, 0.5, 'x', True), else inf/nan as floats (for validation to
    refuse, as main's flags read them), else the bare string (e.g. xla)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_assignment(text: str, where: str) -> tuple[str, object]:
    """'section.key=value' -> (dotted key, value); ValueError naming `where` otherwise."""
    key, sep, raw = text.partition("=")
    if not sep or not key or "." not in key or not raw or any(not p for p in key.split(".")):
        raise ValueError(f"{where}: {text!r} must look like section.key=value")
    return key, parse_value(raw)


def parse(label: str) -> Arm:
    """`method[@section.key=value]...` -> Arm; ValueError for a malformed label (the method
    name itself is checked against the method table by the caller)."""
    method, *assignments = label.split(SEP)
    if not method:
        raise ValueError(f"--methods: arm {label!r} has no method before {SEP!r}")
    where = f"--methods: arm {label!r}"
    return Arm(method, tuple(parse_assignment(a, where) for a in assignments))


def base_label(label: str) -> str:
    """The arm's method alone: the arm it is compared with when it has overrides."""
    return parse(label).method
