"""The `mesh` section: the device mesh's shape over the axes data, fsdp and tensor. No jax."""

from __future__ import annotations

import dataclasses

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; the product must equal the number of devices used."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MeshConfig.{name} must be a positive int, got {value!r}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor
