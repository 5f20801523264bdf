"""Package names that load on first use (PEP 562 module __getattr__).

A package's __init__ re-exports its public names without importing its submodules, so that
importing one light submodule (every package's config.py) imports neither its siblings nor
jax. `from srpo_jax.model import load_hf` still works: the name is looked up in the
package's table and its submodule imported then.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def resolver(package: str, home: Mapping[str, str]) -> Callable[[str], object]:
    """The module __getattr__ for `package`: a name in `home` (name -> submodule) comes from
    that submodule; any other name is tried as a submodule (`srpo_jax.algo.routing` after a
    bare `import srpo_jax.algo`); else AttributeError, as for any missing attribute."""

    def __getattr__(name: str) -> object:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
