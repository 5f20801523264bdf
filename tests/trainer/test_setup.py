"""Set-up of a resumed run: the checkpoint is restored straight into the abstract state.

A run started from a tiny HF checkpoint (model.hf_path) writes a checkpoint; its HF
directory is deleted; set-up again must restore that checkpoint without reading the HF
weights, without building a fresh state (random init, teacher copy, Adam moments), and
without ever holding more than one state's bytes of jax arrays along the way. Live bytes
are counted with jax.live_arrays() at the restore's entry and exit; a set-up that first
loads the weights and builds the init state holds them beside the restored state.
"""

import dataclasses
import gc
import pathlib

import jax
import numpy as np
from flax import nnx

from srpo_jax import config as config_lib
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.learner.config import StepSettings
from srpo_jax.model import Qwen3, hf_io, save_hf
from srpo_jax.trainer import checkpoint
from srpo_jax.trainer import progress as progress_lib
from srpo_jax.trainer import setup as trainer
from srpo_jax.trainer.faults import FaultInjection
from srpo_jax.trainer.loop import ResumeState

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def write_tiny_hf(path: pathlib.Path) -> pathlib.Path:
    """A random HF checkpoint of the demo's architecture, with the demo's tiny tokenizer."""
    arch = config_lib.from_config_dict(
        config_lib.load_config_file(str(CONFIGS / "demo.py"))
    ).model.architecture()
    save_hf(Qwen3(arch, rngs=nnx.Rngs(7)), path)
    tok_lib.build_tiny_tokenizer(path)
    return path


def _config(hf_path: pathlib.Path, mesh_fsdp: int) -> config_lib.Config:
    cd = config_lib.load_config_file(str(CONFIGS / "demo.py"))
    cd.model.preset, cd.model.hf_path = "", str(hf_path)
    cd.mesh.fsdp = mesh_fsdp
    cd.warmup.steps = 0
    cd.data.synthetic_train_size, cd.data.synthetic_test_size = 64, 8
    return config_lib.from_config_dict(cd)


def _live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


def _setup(cfg, wd):
    return trainer.setup(cfg, wd, FaultInjection(), progress_lib.Progress(enabled=False))


def test_resume_restores_into_the_abstract_state_alone(tmp_path, monkeypatch):
    cfg = _config(write_tiny_hf(tmp_path / "hf"), mesh_fsdp=jax.device_count())
    wd = tmp_path / "run"
    run = _setup(cfg, wd)
    # A state unlike any fresh one: step 7, params moved off the HF weights.
    saved = run.state.replace(
        step=run.state.step + 7, params=jax.tree.map(lambda x: x + 0.5, run.state.params)
    )
    run.ckpt.save(7, saved, ResumeState(weight_version=7).to_host(run, 7))
    run.ckpt.close()
    run.engine.close()
    expected = jax.tree.map(np.asarray, saved)
    del run, saved
    gc.collect()
    for f in (tmp_path / "hf").iterdir():  # the weights are gone; so is the directory
        f.unlink()
    (tmp_path / "hf").rmdir()

    calls, samples = [], []
    for module, name in [
        (hf_io, "load_hf"),
        (trainer, "create_sharded_model"),
        (trainer.learner, "init_state"),
    ]:
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    restore = checkpoint.CheckpointManager.restore

    def spy(self, target, **kw):
        samples.append(("entry", _live_bytes() - baseline))
        out = restore(self, target, **kw)
        samples.append(("exit", _live_bytes() - baseline))
        return out

    monkeypatch.setattr(checkpoint.CheckpointManager, "restore", spy)
    baseline = _live_bytes()
    run = _setup(cfg, wd)
    assert calls == []  # no HF read, no random init, no fresh state
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(run.state))
    (_, entry), (_, exit_) = samples
    # Nothing state-sized exists before the restore, and only the restored state after it.
    assert entry < 0.05 * state_bytes, (entry, state_bytes)
    assert exit_ < 1.05 * state_bytes, (exit_, state_bytes)
    assert int(run.state.step) == 7 and run.resume.weight_version == 7
    got = jax.tree.map(np.asarray, run.state)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
    # Restored onto the shards the step is compiled for; the architecture from the
    # workdir's copy of the HF directory's config.json.
    copied = dataclasses.replace(cfg.model, hf_path=str(wd / trainer.MODEL_FILES))
    _, abstract = trainer.learner.abstract_state(
        copied.architecture(), StepSettings.from_config(cfg), run.learner.mesh
    )
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(run.state), strict=True):
        assert a.sharding.is_equivalent_to(x.sharding, x.ndim)
    run.ckpt.close()
    run.engine.close()
