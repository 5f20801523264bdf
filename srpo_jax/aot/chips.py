"""Accelerator chips: the public figures the compile-only targets and the roofline need.

One `Chip` per accelerator model in srpo_jax.aot.topologies: peak dense bf16 matmul rate and HBM
bandwidth (the roofline's two ceilings), and for GPUs the device description XLA:GPU compiles
against. XLA:GPU has no device here, so it reads that description as a GpuTargetConfigProto
in text form (`gpu_target_config`); its field names are those of XLA's published GPU spec
files (xla/backends/gpu/target_config/specs/*.txtpb), the values are NVIDIA's public figures:

- H100 SXM 80 GB: sm_90, 132 SMs, 79.1 GiB (84942979072 B as the runtime reports it),
  3.35 TB/s, 50 MiB L2, 989 TFLOP/s dense bf16.
- H20 96 GB: sm_90, 78 SMs, 97871 MiB as the runtime reports it, 4.0 TB/s, 60 MiB L2,
  148 TFLOP/s dense bf16 (the H20 is a GH100 with most tensor throughput fused off; the SM
  layout, shared memory and register file are the H100's).

The per-SM limits (threads, shared memory, registers) are the same for every sm_90 part.
TPU targets need no description: libtpu knows its chips by topology name
(Topology.compile_topology).
"""

from __future__ import annotations

import dataclasses

MiB = 1024**2


@dataclasses.dataclass(frozen=True)
class GpuFigures:
    """What XLA:GPU's cost models and tiling read about one GPU."""

    description: str  # the runtime's device_kind, e.g. "NVIDIA H20"
    sm_count: int
    compute_capability: tuple[int, int]
    memory_bytes: int
    l2_bytes: int
    clock_ghz: float


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    platform: str  # "gpu" | "tpu"
    peak_bf16_flops: float  # dense bf16 matmul FLOP/s of one device
    hbm_bytes_per_s: float  # HBM bandwidth of one device
    gpu: GpuFigures | None = None


CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip(
            "h20",
            "gpu",
            148e12,
            4.0e12,
            GpuFigures("NVIDIA H20", 78, (9, 0), 97871 * MiB, 60 * MiB, 1.98),
        ),
        Chip(
            "h100",
            "gpu",
            989e12,
            3.35e12,
            GpuFigures("NVIDIA H100 80GB HBM3", 132, (9, 0), 84942979072, 50 * MiB, 1.98),
        ),
        Chip("v5p", "tpu", 459e12, 2.765e12),
        Chip("v5e", "tpu", 197e12, 0.819e12),
        Chip("v6e", "tpu", 918e12, 1.640e12),
    )
}

# sm_90 per-SM limits (CUDA programming guide, compute capability 9.0).
_SM90_LIMITS = {
    "threads_per_block_limit": 1024,
    "threads_per_warp": 32,
    "shared_memory_per_block": 48 * 1024,
    "shared_memory_per_core": 228 * 1024,
    "shared_memory_per_block_optin": 227 * 1024,
    "threads_per_core_limit": 2048,
    "fpus_per_core": 128,
    "registers_per_core_limit": 65536,
    "registers_per_block_limit": 65536,
    "block_dim_limit_x": 2**31 - 1,
    "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535,
}
# The cuDNN the [aot] extra installs (nvidia-cudnn-cu12 9.x): XLA picks fused-attention
# support by this version, so it must not claim more than the wheel provides.
_DNN_VERSION = (9, 8, 0)


def gpu_target_config(chip: Chip) -> str:
    """The GpuTargetConfigProto text XLA:GPU compiles against for this chip."""
    g = chip.gpu
    if g is None:
        raise ValueError(f"chip {chip.name!r} is not a GPU")
    fields = dict(_SM90_LIMITS)
    fields.update(
        core_count=g.sm_count,
        memory_bandwidth=int(chip.hbm_bytes_per_s),
        l2_cache_size=g.l2_bytes,
        clock_rate_ghz=g.clock_ghz,
        device_memory_size=g.memory_bytes,
    )
    major, minor = g.compute_capability
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    dnn = "dnn_version_info {{ major: {} minor: {} patch: {} }}".format(*_DNN_VERSION)
    return (
        f"gpu_device_info {{\n{body}\n"
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
        f'platform_name: "CUDA"\n{dnn}\ndevice_description_str: "{g.description}"\n'
    )
