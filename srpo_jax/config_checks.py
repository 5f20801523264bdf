"""The validation vocabulary every config section uses: ConfigError and its checks.

Each section's frozen dataclass lives in the module it configures (model/config.py,
algo/config.py, learner.py, ...) and validates itself in `__post_init__` with these helpers,
so every message names the dotted key and the bad value ("config.optim.lr must be > 0, got
-1.0") whichever module owns the section. Imports nothing of ours.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def require(ok: bool, key: str, requirement: str, value: Any) -> None:
    """Raise "config.<key> must be <requirement>, got <value>" unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{key} must be {requirement}, got {value!r}")


def one_of(key: str, value: Any, allowed: tuple) -> None:
    require(value in allowed, key, f"one of {', '.join(map(repr, allowed))}", value)


def in_unit(key: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    lo = value > 0.0 if low_open else value >= 0.0
    hi = value < 1.0 if high_open else value <= 1.0
    req = f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    require(lo and hi, key, req, value)


def at_least(section: object, prefix: str, names: tuple[str, ...], low: float) -> None:
    """Each of `names` of `section` must be >= low (one message per key, dotted)."""
    for name in names:
        value = getattr(section, name)
        require(value >= low, f"{prefix}.{name}", f">= {low}", value)
