"""Fixtures shared by the real-server tests (sglang-jax on CPU; see sglang_env.py)."""

import os

import pytest
from sglang_env import ensure_venv, find_python312


@pytest.fixture(scope="session")
def server_python():
    """The python of the cached sglang-jax venv (built on first use), or a clean skip."""
    if os.environ.get("SRPO_SKIP_SGLANG_SERVER"):
        pytest.skip("SRPO_SKIP_SGLANG_SERVER is set")
    python312 = find_python312()
    if python312 is None:
        pytest.skip("sglang-jax needs Python 3.12: none found (set SRPO_SGLANG_PYTHON)")
    return ensure_venv(python312)
