"""Test-wide setup: 8 forced CPU devices, fp32 matmuls, shared data location.

XLA_FLAGS must be set before jax is imported anywhere, so it lives here. Single-device
tests simply use the first device; multi-device tests build meshes over all eight.
"""

import os
import pathlib
import shutil
import tempfile

# LLVM at -O0 for the code XLA emits: the suite's in-process tests are compile-bound (a
# train step compiles in ~70 s at the default level, ~35 s at 0) and run tiny shapes. The
# HLO passes, buffer assignment (the plan's figures) and IEEE semantics do not change;
# subprocess tests that set XLA_FLAGS themselves (main runs) keep the default level.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity tests compare against float64/fp32 references: full-precision matmuls.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the session: set here in the pytest process
# before the xdist workers start, so both workers and every subprocess (main, plan, the
# multi-host runs) inherit it. Compiles dominate the suite on CPU and many tests compile the
# same programs (the demo's warm-up and sampler, one train step under two method names, a
# resumed run's step). Fresh per session, so a run never reuses a previous run's binaries.
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="srpo_jax_test_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def packaged_data() -> pathlib.Path:
    """The benchmark splits shipped inside the package (srpo_jax/data/benchmarks)."""
    from srpo_jax.data import datasets

    return datasets.PACKAGED_DATA_DIR


def pytest_unconfigure(config):
    # Only the process that made the cache removes it (xdist workers inherit the variable).
    if _OWN_XLA_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)
