"""Device mesh and the one logical-axis -> mesh-axis rules table.

    config.py  the `mesh` section (MeshConfig), importable without jax
    mesh.py    the rules table, make_mesh, named and parameter shardings

`from srpo_jax.sharding import make_mesh` works as before: names load on first use, so
importing the config alone starts no jax.
"""

from srpo_jax.lazy_exports import resolver

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

__getattr__ = resolver(__name__, _HOME)
