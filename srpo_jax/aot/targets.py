"""Compile for a GPU or TPU topology from a machine that has neither (ahead-of-time).

`compile_devices(topology)` returns compile-only devices from
jax.experimental.topologies.get_topology_desc: XLA:GPU from the jax-cuda12 plugin against
a GpuTargetConfigProto written from the chip's public figures (srpo_jax.aot.chips), XLA:TPU from
libtpu by topology name. A jit lowered with ShapeDtypeStructs whose shardings name those
devices compiles with the target's real compiler (`jax.jit(f).lower(*structs).compile()`),
and `analyse(compiled)` reads its buffer assignment and FLOPs. Nothing runs; nothing is
allocated beyond the compiler's own memory.

The plugins register their platforms only when they are installed (pip extra `[aot]`); JAX
still runs on the CPU (JAX_PLATFORMS=cpu) because the compile-only clients need no device.
A missing extra is an `AotUnavailable` whose message names the pip extra to install.

FLOPs: counted from the compiled HLO's matmuls (srpo_jax.aot.hlo_flops: dots, cuBLAS GEMM custom
calls, TPU convolutions), loop bodies times their trip counts. The compilers' cost_analysis()
is used only for a program without a single matmul: XLA:GPU's compile-only client has none,
and XLA:CPU's and XLA:TPU's count a while loop's body once (a scanned 36-layer stack as one
layer). Fused attention custom calls (cuDNN, splash) are not in the count; the memory plan
adds them from the model shape (`step_attention_flops`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys

from srpo_jax import jax_startup
from srpo_jax.aot import chips, topologies

# `python -m srpo_jax.aot.targets` imports jax here, first: quietly, or the CUDA plugin's
# driver probe writes its cudart_stub lines to stderr on a host without a GPU (jax_startup).
jax_startup.import_jax()

import jax  # noqa: E402

EXTRA = "pip install -e '.[aot]'"
_PLUGIN_OF = {"gpu": "jax_plugins.xla_cuda12", "tpu": "libtpu"}


class AotUnavailable(RuntimeError):
    """The compile-only target cannot be built here (missing extra, unknown topology)."""


def require_extra(platform: str) -> None:
    """Raises AotUnavailable naming the extra when the platform's compiler is absent."""
    module = _PLUGIN_OF[platform]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        what = "jax-cuda12-plugin" if platform == "gpu" else "libtpu"
        raise AotUnavailable(
            f"compiling for {platform.upper()} needs {what}, which is not installed: {EXTRA}"
        )


@functools.cache
def compile_devices(topology_name: str) -> tuple[jax.Device, ...]:
    """The compile-only devices of a srpo_jax.aot.topologies entry, in process-major order."""
    if topology_name not in topologies.TOPOLOGIES:
        known = ", ".join(topologies.TOPOLOGIES)
        raise AotUnavailable(f"unknown topology {topology_name!r}; known: {known}")
    topo = topologies.TOPOLOGIES[topology_name]
    require_extra(topo.platform)
    from jax.experimental import topologies as jtopo

    chip = chips.CHIPS[topo.chip]
    if topo.platform == "gpu":
        try:
            with jax_startup.driver_probe_filtered():  # the plugin's driver probe, on first use
                desc = jtopo.get_topology_desc(
                    platform="cuda",
                    topology=topo.compile_topology,
                    target_config=chips.gpu_target_config(chip),
                )
        except NotImplementedError:  # the CUDA plugin tried a driver, failed, and left
            raise AotUnavailable(
                "the CUDA plugin initialised as a runtime (no GPU here) instead of compile-only:"
                " set JAX_PLATFORMS=cpu before jax starts"
            ) from None
    else:
        # libtpu reads these on start-up; unset, it logs two harmless warnings per process.
        # With them it still logs that it cannot tell this host's accelerator type (there is
        # no TPU here; the topology is named): jax_startup's filter drops that line.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # No chip is opened, so concurrent compile-only processes (pytest-xdist workers, a
        # bench beside the tests) need not take libtpu's one-process lock.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        with jax_startup.driver_probe_filtered():
            desc = jtopo.get_topology_desc(topology_name=topo.compile_topology, platform="tpu")
    devices = tuple(desc.devices)
    if len(devices) != topo.num_devices:
        raise AotUnavailable(
            f"topology {topo.name}: compile-only target {topo.compile_topology!r} has "
            f"{len(devices)} devices, expected {topo.num_devices}"
        )
    return devices


def compiler_name(topology_name: str) -> str:
    topo = topologies.get(topology_name)
    return "XLA:GPU (jax-cuda12-plugin)" if topo.platform == "gpu" else "XLA:TPU (libtpu)"


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Per-device figures of one compiled program."""

    compiler: str
    arguments: int
    outputs: int
    aliased: int
    temp: int
    code: int
    flops: float  # per device, one call
    flops_source: str  # "hlo dots" | "cost_analysis" (a program without matmuls)

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temp + self.code


def analyse(compiled, compiler: str = "") -> Analysis:
    """Memory figures (buffer assignment) and FLOPs of a jax Compiled for one device."""
    mem = compiled.memory_analysis()
    if mem is None:
        raise AotUnavailable(f"{compiler or 'this compiler'} gives no memory analysis")
    from srpo_jax.aot.hlo_flops import dot_flops

    flops, source = float(dot_flops(compiled.as_text())), "hlo dots"
    if flops == 0:
        cost, cost_source = _cost_flops(compiled)
        if cost:
            flops, source = cost, cost_source
    return Analysis(
        compiler=compiler,
        arguments=int(mem.argument_size_in_bytes),
        outputs=int(mem.output_size_in_bytes),
        aliased=int(mem.alias_size_in_bytes),
        temp=int(mem.temp_size_in_bytes),
        code=int(mem.generated_code_size_in_bytes),
        flops=flops,
        flops_source=source,
    )


def _cost_flops(compiled) -> tuple[float | None, str]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # XLA:GPU compile-only: "cost analysis not supported"
        return None, ""
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost or cost["flops"] <= 0:
        return None, ""
    return float(cost["flops"]), "cost_analysis"


def compile_for(topology_name: str, fn, *structs, **jit_kwargs):
    """Compiles jax.jit(fn, **jit_kwargs) for `structs` (ShapeDtypeStructs that already carry
    shardings on compile_devices(topology_name)) -> (Compiled, Analysis)."""
    compiled = jax.jit(fn, **jit_kwargs).lower(*structs).compile()
    return compiled, analyse(compiled, compiler_name(topology_name))


def target_mesh(topology_name: str, mesh_cfg):
    """The learner's ("data", "fsdp", "tensor") mesh over the topology's compile-only devices
    (srpo_jax.sharding.make_mesh; mesh_cfg.size must equal the device count)."""
    from srpo_jax.sharding import make_mesh

    return make_mesh(mesh_cfg, compile_devices(topology_name))


def fused_attention_flops(model_cfg, rows: int, tokens: int, *, backward: bool) -> float:
    """Matmul FLOPs of causal self-attention over `rows` x `tokens` for every layer, from the
    model shape: q k^T and p v are 2 x 2 T^2 H per head, halved by the causal mask; the
    backward recomputes the scores and forms dq, dk, dv, dp (2.5x the forward). For fused
    kernels (cuDNN), whose custom calls hlo_flops cannot see."""
    per_head = 2 * 2 * tokens * tokens * model_cfg.head_dim / 2
    forward = rows * model_cfg.num_heads * model_cfg.num_layers * per_head
    return forward * (3.5 if backward else 1.0)


def fused_attention_kernel(model_cfg) -> str:
    """The fused kernel ("cudnn" | "splash") the model's attention compiles to under the
    current mesh's platform, or "" for the XLA path (whose matmuls the HLO count sees)."""
    from srpo_jax.model import attention

    impl = attention.resolve(model_cfg.attention_impl, attention.current_platform())
    if impl == "cudnn" and jax.numpy.dtype(model_cfg.dtype).itemsize != 2:
        return ""  # cuDNN takes bf16/fp16 only; fp32 compute runs the XLA path
    return impl if impl in ("cudnn", "splash") else ""


def step_attention_flops(model_cfg, batch) -> float:
    """Attention FLOPs of one step inside fused kernels, all devices together: per
    micro-batch the student's forward and backward over its rows (plus the forward again
    under remat) and the teacher's forward over its rows. `batch` is a TrainBatch (rows of
    prompt+response, teacher rows of reprompt+response) or a PackedBatch (streams; a fused
    kernel with segment ids still computes every causal block of a stream), abstract or not."""
    if hasattr(batch, "input_ids_KL"):
        student, teacher = batch.input_ids_KL.shape, batch.teacher_input_ids_JL.shape
    else:
        student, teacher = batch.input_ids_BS.shape, batch.teacher_input_ids_MT.shape
    n_mini, n_micro, rows, student_t = student
    flops = fused_attention_flops(model_cfg, rows, student_t, backward=True)
    if model_cfg.remat:
        flops += fused_attention_flops(model_cfg, rows, student_t, backward=False)
    flops += fused_attention_flops(model_cfg, teacher[2], teacher[3], backward=False)
    return flops * n_micro * n_mini


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Lower bounds on one step's time at the device's peak bf16 rate and HBM bandwidth."""

    flops: float
    bytes_moved: float
    compute_s: float
    memory_s: float

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.memory_s)


def roofline(topology_name: str, flops: float, bytes_moved: float) -> Roofline:
    """flops and bytes_moved are per device; the bound is the slower of the two ceilings."""
    chip = chips.CHIPS[topologies.get(topology_name).chip]
    return Roofline(
        flops, bytes_moved, flops / chip.peak_bf16_flops, bytes_moved / chip.hbm_bytes_per_s
    )


def fail(message: str) -> None:
    """The CLI form of a bad target: one `error:` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    """`python -m srpo_jax.aot.targets TOPOLOGY...`: checks each target's compiler and prints its
    compile-only devices (the setup check for the [aot] extra)."""
    # The compile-only clients need no device; without this the CUDA plugin would look for
    # a driver and, finding none, register no topology.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    if len(argv) < 2:
        known = ", ".join(topologies.TOPOLOGIES)
        fail(f"usage: python -m srpo_jax.aot.targets TOPOLOGY...; known: {known}")
    for name in argv[1:]:
        try:
            devices = compile_devices(name)
        except AotUnavailable as e:
            fail(str(e))
        print(f"{name}: {compiler_name(name)}, {len(devices)} x {devices[0].device_kind}")


if __name__ == "__main__":
    main(sys.argv)
