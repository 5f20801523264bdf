"""Accelerator topologies the memory planner (srpo_jax.aot.plan) and the compile-only
targets (srpo_jax.aot.targets) share.

Each entry is what one run of the learner sees: the number of JAX devices, how many host
processes own them, and the memory one device offers. Memory figures are the capacity
the runtime reports for one device (nvidia-smi "Total" for GPUs, the HBM per chip for TPU
v5p/v5e, where one v5p chip is one JAX device in megacore mode), not the marketing
gigabytes. On GPU, JAX preallocates only XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75) of
it: launch/slurm_gpu.sh raises that to 0.95, and the plan's verdict assumes the same.
"""

from __future__ import annotations

import dataclasses

GiB = 1024**3
MiB = 1024**2


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    platform: str  # "gpu" | "tpu"
    num_devices: int
    num_hosts: int
    device_bytes: int  # memory of one device as the runtime reports it
    usable_fraction: float  # what the learner may use of it (GPU: XLA_PYTHON_CLIENT_MEM_FRACTION)
    description: str
    chip: str = ""  # key of srpo_jax.aot.chips.CHIPS (peak FLOP/s, HBM bandwidth, GPU description)
    # get_topology_desc's topology string for the compile-only devices (srpo_jax.aot.targets):
    # TPU "<chip>:<chips grid>", GPU "<slices>x<hosts>x<devices per host>".
    compile_topology: str = ""

    @property
    def usable_bytes(self) -> int:
        return int(self.device_bytes * self.usable_fraction)


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology(
            "h20x8", "gpu", 8, 1, 97871 * MiB, 0.95, "1 node, 8 x NVIDIA H20 96 GB", "h20", "1x1x8"
        ),
        Topology(
            "h20x16",
            "gpu",
            16,
            2,
            97871 * MiB,
            0.95,
            "2 nodes, 8 x NVIDIA H20 each",
            "h20",
            "1x2x8",
        ),
        Topology(
            "h100x8",
            "gpu",
            8,
            1,
            81559 * MiB,
            0.95,
            "1 node, 8 x NVIDIA H100 SXM 80 GB",
            "h100",
            "1x1x8",
        ),
        Topology(
            "h100x16",
            "gpu",
            16,
            2,
            81559 * MiB,
            0.95,
            "2 nodes, 8 x H100 80 GB each",
            "h100",
            "1x2x8",
        ),
        Topology(
            "tpu-v5p-8",
            "tpu",
            4,
            1,
            95 * GiB,
            1.0,
            "TPU v5p-8: 1 VM, 4 chips x 95 GiB",
            "v5p",
            "v5p:2x2x1",
        ),
        Topology(
            "tpu-v5p-16",
            "tpu",
            8,
            2,
            95 * GiB,
            1.0,
            "TPU v5p-16: 2 VMs, 8 chips",
            "v5p",
            "v5p:2x2x2",
        ),
        Topology(
            "tpu-v5e-16",
            "tpu",
            16,
            4,
            16 * GiB,
            1.0,
            "TPU v5e-16: 4 VMs, 16 x 16 GiB",
            "v5e",
            "v5e:4x4",
        ),
        Topology(
            "tpu-v6e-8",
            "tpu",
            8,
            1,
            32 * GiB,
            1.0,
            "TPU v6e-8: 1 VM, 8 chips x 32 GiB",
            "v6e",
            "v6e:2x4",
        ),
    )
}


def get(name: str) -> Topology:
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def table() -> str:
    """The topology table as fixed-width text (`python -m srpo_jax.aot.plan --list`)."""
    lines = [f"{'name':<12} {'devices':>7} {'hosts':>5} {'GiB/device':>10}  description"]
    for t in TOPOLOGIES.values():
        lines.append(
            f"{t.name:<12} {t.num_devices:>7} {t.num_hosts:>5} "
            f"{t.device_bytes / GiB:>10.1f}  {t.description}"
        )
    return "\n".join(lines)
