"""Device mesh and the one logical-axis -> mesh-axis rules table.

    config.py  the `mesh` section (MeshConfig), importable without jax
    mesh.py    the rules table, make_mesh, named and parameter shardings

`from srpo_jax.sharding import make_mesh` works as before: names load on first use, so
importing the config alone starts no jax.
"""

import importlib

_HOME = {"MeshConfig": "config", "MESH_AXES": "config"}
_HOME.update(
    dict.fromkeys(
        (
            "LOGICAL_AXIS_RULES",
            "fit_spec",
            "logical_to_spec",
            "make_mesh",
            "named_sharding",
            "param_shardings",
        ),
        "mesh",
    )
)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
