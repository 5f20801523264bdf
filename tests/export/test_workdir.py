"""A run's workdir read back: which checkpoint --step=latest|best|N names, and its errors."""

import json
import pathlib

import pytest

from srpo_jax import config as config_lib
from srpo_jax.export.workdir import RunDir, RunDirError, check_out_dir

DEMO = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"


def _run(tmp_path, steps, evals) -> RunDir:
    """A workdir with the demo's config.json, checkpoints at `steps` and eval lines `evals`."""
    cfg = config_lib.from_config_dict(config_lib.load_config_file(str(DEMO)))
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    for s in steps:
        (tmp_path / "checkpoints" / str(s)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-3").mkdir(parents=True)  # unfinished
    lines = [{"step": s, "reward/mean": 0.5} for s in range(1, 13)]
    lines += [{"step": s, "eval/avg_at_k": acc} for s, acc in evals]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return RunDir.open(tmp_path)


def test_latest_best_and_a_number_name_checkpointed_steps(tmp_path):
    run = _run(tmp_path, [4, 8, 10], [(0, 0.1), (4, 0.3), (8, 0.5), (10, 0.2)])
    assert run.checkpoint_steps() == [4, 8, 10]  # the unfinished step 12 is not one
    assert run.choose_step("latest") == 10
    assert run.choose_step("best") == 8
    assert run.choose_step("4") == 4


def test_a_tie_for_best_goes_to_the_later_step(tmp_path):
    run = _run(tmp_path, [4, 8], [(4, 0.5), (8, 0.5), (6, 0.1)])
    assert run.best_eval_step() == (8, 0.5)


def test_a_best_step_without_checkpoint_names_the_nearest_ones(tmp_path):
    run = _run(tmp_path, [4, 8, 10], [(4, 0.3), (6, 0.9), (8, 0.5)])
    with pytest.raises(RunDirError, match=r"avg@k \(0.9000\) is at step 6, .* steps: 4 and 8$"):
        run.choose_step("best")
    with pytest.raises(RunDirError, match=r"--step=11, .* nearest checkpointed steps: 10$"):
        run.choose_step("11")
    with pytest.raises(RunDirError, match="--step=last: expected latest, best or a step"):
        run.choose_step("last")


def test_no_checkpoint_no_eval_and_no_run_are_errors(tmp_path):
    run = _run(tmp_path / "a", [], [])
    with pytest.raises(RunDirError, match="has no checkpoint"):
        run.choose_step("latest")
    run = _run(tmp_path / "b", [2], [])
    with pytest.raises(RunDirError, match="holds no evaluation"):
        run.choose_step("best")
    with pytest.raises(RunDirError, match="not a training run's workdir: no config.json"):
        RunDir.open(tmp_path / "c")


def test_the_out_folder_must_be_new_or_empty_unless_forced(tmp_path):
    check_out_dir(tmp_path / "new", force=False)
    check_out_dir(tmp_path, force=False)  # empty
    (tmp_path / "x").write_text("")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        check_out_dir(tmp_path, force=False)
    check_out_dir(tmp_path, force=True)
    with pytest.raises(RunDirError, match="is not a directory"):
        check_out_dir(tmp_path / "x", force=True)


def test_a_checkpoint_sharded_over_eight_devices_restores_onto_one(tmp_path):
    import jax
    import numpy as np
    from flax import nnx

    from srpo_jax.learner import train_step as learner
    from srpo_jax.model.qwen3 import create_sharded_model
    from srpo_jax.sharding import MeshConfig, make_mesh
    from srpo_jax.trainer.checkpoint import CheckpointManager

    cd = config_lib.load_config_file(str(DEMO))
    cd.mesh.fsdp = 8  # the 8 CPU devices of tests/conftest.py
    cfg = config_lib.from_config_dict(cd)
    (tmp_path / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    mesh = make_mesh(cfg.mesh)
    _, params = nnx.split(create_sharded_model(cfg.model.architecture(), mesh, seed=3), nnx.Param)
    state = learner.init_state(params, learner.StepSettings.from_config(cfg), mesh)
    state = state.replace(teacher=jax.tree.map(lambda x: 2 * x + 1, state.teacher))
    ckpt = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    ckpt.save(3, state, {})
    ckpt.close()
    one = make_mesh(MeshConfig(), jax.devices("cpu")[:1])
    for which, expected in (("policy", state.params), ("teacher", state.teacher)):
        tree = RunDir.open(tmp_path).restore_tree(3, which, one)
        assert jax.tree.structure(tree) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(expected), strict=True):
            assert got.sharding.device_set == {jax.devices("cpu")[0]}
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), strict=True)
