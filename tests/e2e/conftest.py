"""The end-to-end tests' shared warm start: the demo model after its supervised warm-up.

Rollouts of the untrained demo model never score, so no row is routed to the teacher; the
runs that must exercise routing start from a warmed model. The warm-up (300 steps at lr
3e-3: the synthetic format forms after some 150-250) is the same for each of them, so it
runs once per test session: the first test that asks for it builds it under a file lock,
in a directory shared by the xdist workers, and later ones (either worker) read it.

The checkpoint is an HF directory (weights in fp32 and the demo's tiny tokenizer), used as
`--config.model.hf_path=DIR --config.model.preset= --config.tokenizer.path=DIR`.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.e2e.main_runs import build_warm_demo, shared_root


@pytest.fixture(scope="session")
def warm_demo(tmp_path_factory) -> pathlib.Path:
    """The demo model after WARMUP_STEPS supervised steps, as an HF directory (read-only:
    a test that changes or deletes it copies it first)."""
    return build_warm_demo(shared_root(tmp_path_factory))
