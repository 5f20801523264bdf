"""Checkpoint properties: bit-exact sharded round trip, keep-N, atomicity, fallback, mismatch."""

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.trainer.checkpoint import CheckpointManager, CheckpointMismatchError, abstract_like

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _state(scale: float = 1.0):
    """A train-state-like pytree: sharded fp32/bf16 params, optax state, step, typed rng."""
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    rng = np.random.default_rng(0)
    w_DF = jax.device_put(
        jnp.asarray(rng.standard_normal((16, 8)) * scale, jnp.float32),
        NamedSharding(mesh, P("fsdp", "data")),
    )
    emb_VD = jax.device_put(
        jnp.asarray(rng.standard_normal((32, 4)), jnp.bfloat16), NamedSharding(mesh, P("fsdp"))
    )
    params = {"layers": [{"w": w_DF}], "embed": emb_VD}
    opt_state = optax.adamw(1e-3).init(params)
    teacher = jax.tree.map(lambda x: x + 1, params)
    return {
        "params": params,
        "teacher": teacher,
        "opt_state": opt_state,
        "step": jnp.int32(7),
        "rng": jax.random.key(42),
    }


def _assert_bit_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(
            np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8)
        )
        if isinstance(getattr(x, "sharding", None), NamedSharding):
            assert y.sharding == x.sharding


def test_roundtrip_bit_exact_sharded(tmp_path):
    state = _state()
    host = {"cursor": {"epoch": 2, "index": 17}, "seeds": [1, 2], "weight_version": 7}
    ck = CheckpointManager(tmp_path, keep=3)
    ck.save(7, state, host)
    ck.wait()
    assert ck.latest_step() == 7
    restored = ck.restore(abstract_like(state))
    assert restored.step == 7
    assert restored.host_state == host
    assert jax.tree.structure(restored.state) == jax.tree.structure(state)
    _assert_bit_equal(state, restored.state)
    # Concrete arrays work as the target too; a fresh manager sees the same checkpoint.
    again = CheckpointManager(tmp_path).restore(state)
    _assert_bit_equal(state, again.state)


def test_read_only_restore_of_one_tree_reads_it_alone_and_touches_nothing(tmp_path):
    state = _state()
    CheckpointManager(tmp_path, async_save=False).save(7, state, {"step": 7})
    in_flight = tmp_path / "8.orbax-checkpoint-tmp-1"  # a writer's next step, still open
    in_flight.mkdir()
    reader = CheckpointManager(tmp_path, read_only=True)
    restored = reader.restore(abstract_like(state), step=7, only=("teacher",))
    _assert_bit_equal(state["teacher"], restored.state["teacher"])
    for field in ("params", "opt_state", "step", "rng"):
        assert all(x is None for x in jax.tree.leaves(restored.state[field], is_leaf=_none))
    assert jax.tree.structure(restored.state["opt_state"], is_leaf=_none) == jax.tree.structure(
        jax.tree.map(lambda _: None, state["opt_state"]), is_leaf=_none
    )
    reader.close()
    assert in_flight.is_dir()
    # A writable manager removes it: orbax starts that clean-up in the background when the
    # manager opens and waits for it before the first save, so the save is the sync point.
    writer = CheckpointManager(tmp_path, async_save=False)
    writer.save(9, state, {"step": 9})
    writer.close()
    assert not in_flight.exists()
    # The whole tree is still checked against the target.
    other = dict(state, step=jnp.zeros((2,), jnp.int32))
    with pytest.raises(CheckpointMismatchError, match="leaf step"):
        CheckpointManager(tmp_path, read_only=True).restore(other, only=("teacher",))


def _none(x) -> bool:
    return x is None


def test_keeps_last_n_and_explicit_step(tmp_path):
    ck = CheckpointManager(tmp_path, keep=2, async_save=False)
    for step in range(1, 6):
        ck.save(step, {"w": jnp.full((3,), float(step))}, {"step": step})
    assert ck.all_steps() == [4, 5]
    r = ck.restore({"w": jnp.zeros(3)}, step=4)
    assert r.step == 4 and np.all(np.asarray(r.state["w"]) == 4.0)
    with pytest.raises(FileNotFoundError, match="step 2"):
        ck.restore({"w": jnp.zeros(3)}, step=2)


def test_no_checkpoint_returns_none(tmp_path):
    assert CheckpointManager(tmp_path).restore({"w": jnp.zeros(3)}) is None
    assert CheckpointManager(tmp_path).latest_step() is None


def test_killed_mid_write_is_never_picked_up(tmp_path):
    """A writer SIGKILLed after writing step 2's files but before orbax's finalising rename."""
    writer = textwrap.dedent(
        """
        import os, sys, time
        import jax.numpy as jnp
        from srpo_jax.trainer.checkpoint import CheckpointManager
        real_rename = os.rename
        def frozen_rename(src, dst, *a, **k):
            if os.path.basename(str(dst)) == "2":  # finalising step 2: stop here
                print("FROZEN", flush=True)
                time.sleep(600)
            return real_rename(src, dst, *a, **k)
        os.rename = frozen_rename
        ck = CheckpointManager(sys.argv[1], keep=3, async_save=False)
        ck.save(1, {"w": jnp.full((4,), 1.0)}, {"step": 1})
        ck.save(2, {"w": jnp.full((4,), 2.0)}, {"step": 2})
        print("NOT FROZEN", flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "FROZEN", f"writer did not reach the finalising rename: {line!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert "1" in leftovers and "2" not in leftovers
    assert any(name.startswith("2.") for name in leftovers), leftovers  # the half-written step
    ck = CheckpointManager(tmp_path)
    assert ck.latest_step() == 1
    r = ck.restore({"w": jnp.zeros(4)})
    assert r.step == 1 and np.all(np.asarray(r.state["w"]) == 1.0)


@pytest.mark.parametrize("damage", ["arrays", "host_json"])
def test_unreadable_latest_falls_back_with_warning(tmp_path, caplog, damage):
    ck = CheckpointManager(tmp_path, keep=3, async_save=False)
    ck.save(1, {"w": jnp.full((4,), 1.0)}, {"step": 1})
    ck.save(2, {"w": jnp.full((4,), 2.0)}, {"step": 2})
    if damage == "arrays":
        shutil.rmtree(tmp_path / "2" / "state")
    else:
        (tmp_path / "2" / "host" / "metadata").write_text('{"step": ')  # truncated JSON
    with caplog.at_level(logging.WARNING, logger="srpo_jax.trainer.checkpoint"):
        r = CheckpointManager(tmp_path).restore({"w": jnp.zeros(4)})
    assert r.step == 1 and np.all(np.asarray(r.state["w"]) == 1.0)
    assert "step 2" in caplog.text and "falling back to step 1" in caplog.text


def test_shape_mismatch_names_leaf_and_shapes(tmp_path):
    ck = CheckpointManager(tmp_path, async_save=False)
    ck.save(3, {"params": {"layers": [{"w": jnp.zeros((4, 8))}]}, "step": jnp.int32(3)})
    target = {"params": {"layers": [{"w": jnp.zeros((4, 16))}]}, "step": jnp.int32(0)}
    with pytest.raises(CheckpointMismatchError) as err:
        ck.restore(target)
    msg = str(err.value)
    assert "params/layers/0/w" in msg and "(4, 8)" in msg and "(4, 16)" in msg
    extra = {**target, "params": {"layers": [{"w": jnp.zeros((4, 8))}], "b": jnp.zeros(2)}}
    with pytest.raises(CheckpointMismatchError, match="params/b"):
        ck.restore(extra)
