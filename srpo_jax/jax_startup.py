"""JAX start-up without the CUDA plugin's driver-probe noise on hosts that have no GPU.

With the `[aot]` extra installed (jax-cuda12-plugin, for compiling XLA:GPU programs from a
CPU machine), every `import jax` and the first backend start on a host without NVIDIA
drivers write, from C++ before absl logging is set up:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.

No environment variable silences it (TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel and
ABSL_MIN_LOG_LEVEL were tried with jax 0.10.2). The entry points (`main.py`, `tools/plan.py`,
`tools/compare.py`) import JAX and start its backend through `import_jax()` and
`device_count()`, both inside `driver_probe_filtered()`, which sends file descriptor 2
to a temporary file for the duration and then writes back every line except those two, so a
bad flag's single `error:` line stands alone and nothing else on stderr is lost.

`add_libtpu_workarounds()` (run when srpo_jax is imported, before any backend starts) adds
to LIBTPU_INIT_ARGS the libtpu flags this program needs: libtpu 0.0.42 aborts the process
(`rotated_pincer_fusion_emitter.cc Check failed: s_count.has_value()`) compiling the train
step of Qwen3-4B/8B on a v5p-8 slice (tensor=4) for some sequence lengths (2 rows of 10240
tokens crash, 9216 and 16384 compile), inside its fused all-reduce + reduce-scatter emitter;
`--xla_tpu_enable_all_reduce_scatter_fusion=false` makes it emit the two collectives
separately. A value the user already put in LIBTPU_INIT_ARGS for that flag is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
)


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


def import_jax() -> None:
    """`import jax` with the probe noise filtered (the module is then cached for everyone)."""
    with driver_probe_filtered():
        import jax  # noqa: F401


def device_count() -> int:
    """`jax.device_count()`, the first backend start, with the probe noise filtered. Call
    `jax.distributed.initialize` before it, outside the filter (it may wait on peers)."""
    import jax

    with driver_probe_filtered():
        return jax.device_count()
