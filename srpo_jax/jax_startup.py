"""JAX start-up that is quiet on every machine: the platforms chosen from the hardware, the
CUDA plugin's driver-probe lines filtered, libtpu's flags set.

With the `[aot]` extra installed (jax-cuda12-plugin and libtpu, for compiling XLA:GPU and
XLA:TPU programs from a CPU machine), a JAX left to choose its platforms on a host without
accelerators starts every plugin it finds: the CUDA plugin's version check fails with a
25-line traceback (logged by jax, the run goes on) and libtpu logs that it cannot find a TPU
(its accelerator type and worker hostnames). `import_jax()` therefore pins
`jax_platforms` to "cpu" when this host shows no accelerator (`accelerator_present`: no
NVIDIA driver or device, no AMD ROCm device, no TPU device or Google PCI device) and the
user set no JAX_PLATFORMS. Then neither plugin starts as a runtime; the CUDA plugin still
registers its compiler, so the compile-only targets (srpo_jax.aot.targets) keep working.
A host with a GPU or TPU, or a JAX_PLATFORMS the user set (even empty), is left to JAX.

Every `import jax` and the first backend start on a host without NVIDIA drivers also write,
from C++ before absl logging is set up:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.

No environment variable silences it (TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel and
ABSL_MIN_LOG_LEVEL were tried with jax 0.10.2). The entry points (`main.py`, `aot/plan.py`,
`compare/run.py`) import JAX and start its backend through `import_jax()` and
`device_count()`, both inside `driver_probe_filtered()`, which sends file descriptor 2
to a temporary file for the duration and then writes back every line except those two, so a
bad flag's single `error:` line stands alone and nothing else on stderr is lost. The same
filter drops libtpu's "could not determine TPU accelerator type" line when a compile-only
TPU target loads libtpu on a host without a TPU (srpo_jax.aot.targets).

`add_libtpu_workarounds()` (run when srpo_jax is imported, before any backend starts) adds
to LIBTPU_INIT_ARGS the libtpu flags this program needs: libtpu 0.0.42 aborts the process
(`rotated_pincer_fusion_emitter.cc Check failed: s_count.has_value()`) compiling the train
step of Qwen3-4B/8B on a v5p-8 slice (tensor=4) for some sequence lengths (2 rows of 10240
tokens crash, 9216 and 16384 compile), inside its fused all-reduce + reduce-scatter emitter;
`--xla_tpu_enable_all_reduce_scatter_fusion=false` makes it emit the two collectives
separately. A value the user already put in LIBTPU_INIT_ARGS for that flag is kept.

Only the standard library is imported here: `import srpo_jax` stays free of JAX.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterator

_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
    # libtpu loaded for a compile-only TPU target on a host without a TPU
    re.compile(r"^Failed to find host bounds for accelerator type: WARNING: could not determine"),
)

# Paths (under the host's root) whose presence means an accelerator JAX should look for.
_ACCELERATOR_PATHS = (
    "proc/driver/nvidia",  # the NVIDIA kernel driver
    "dev/nvidiactl",  # NVIDIA device nodes (containers get these without /proc/driver)
    "dev/nvidia0",
    "dev/dxg",  # a GPU under WSL2
    "dev/kfd",  # AMD ROCm
)
_ACCELERATOR_GLOBS = ("dev/accel*", "dev/vfio/[0-9]*")  # TPU v4/v5 chips; v6e through vfio
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips on the PCI bus


LIBTPU_WORKAROUNDS = ("--xla_tpu_enable_all_reduce_scatter_fusion=false",)


def add_libtpu_workarounds() -> None:
    """Appends LIBTPU_WORKAROUNDS to LIBTPU_INIT_ARGS, except flags already set there."""
    current = os.environ.get("LIBTPU_INIT_ARGS", "")
    set_flags = {arg.split("=", 1)[0] for arg in current.split()}
    extra = [f for f in LIBTPU_WORKAROUNDS if f.split("=", 1)[0] not in set_flags]
    if extra:
        os.environ["LIBTPU_INIT_ARGS"] = " ".join([current, *extra]).strip()


def is_driver_probe_noise(line: str) -> bool:
    return any(p.search(line) for p in _NOISE)


@contextlib.contextmanager
def driver_probe_filtered() -> Iterator[None]:
    """Runs the block with fd 2 captured; replays what it wrote minus the probe lines."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not is_driver_probe_noise(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def accelerator_present(root: str = "/") -> bool:
    """Whether the host under `root` shows a GPU or TPU (device nodes, driver, PCI ids)."""
    if any(os.path.exists(os.path.join(root, p)) for p in _ACCELERATOR_PATHS):
        return True
    if any(glob.glob(os.path.join(root, g)) for g in _ACCELERATOR_GLOBS):
        return True
    for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
        with contextlib.suppress(OSError), open(vendor) as f:
            if f.read().strip() == _GOOGLE_PCI_VENDOR:
                return True
    return False


def default_platforms(environ: dict[str, str] | None = None, root: str = "/") -> str | None:
    """The jax_platforms to pin: "cpu" on a host without accelerators, None (JAX's own
    choice) on one with them or when the user set JAX_PLATFORMS (an empty value included)."""
    environ = os.environ if environ is None else environ
    if "JAX_PLATFORMS" in environ or accelerator_present(root):
        return None
    return "cpu"


def import_jax() -> None:
    """`import jax` with the probe noise filtered (the module is then cached for everyone),
    then `jax_platforms` pinned to `default_platforms()` unless it is already set. Call it
    before the first backend start (which reads the platforms)."""
    with driver_probe_filtered():
        import jax

    platforms = default_platforms()
    if platforms is not None and jax.config.jax_platforms is None:
        jax.config.update("jax_platforms", platforms)


def device_count() -> int:
    """`jax.device_count()`, the first backend start, with the probe noise filtered. Call
    `jax.distributed.initialize` before it, outside the filter (it may wait on peers)."""
    import jax

    with driver_probe_filtered():
        return jax.device_count()
