"""The run that starts is the run the config describes.

With `model.hf_path` set, the learner's model must carry every setting of the resolved
config (remat, dtype, attention query chunk, ...), not only what config.json holds: the
memory plan plans that program, so a dropped field trains a different one. And the memory
plan must build the model config and learner settings that main builds from the same file.
"""

import dataclasses
import pathlib

import jax
import ml_collections
from flax import nnx

from srpo_jax import config as config_lib
from srpo_jax.aot import plan
from srpo_jax.learner.config import StepSettings
from srpo_jax.model import Qwen3, save_hf
from srpo_jax.model.config import tiny
from srpo_jax.sharding import make_mesh
from srpo_jax.trainer import setup as trainer

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _demo_dict() -> ml_collections.ConfigDict:
    return config_lib.load_config_file(str(CONFIGS / "demo.py"))


def test_hf_path_learner_model_equals_resolved_config(tmp_path):
    # A tiny checkpoint written by our own saver; its config.json says remat False, bf16,
    # the default query chunk. The run's config says otherwise, and the run must win.
    written = tiny(vocab_size=512)
    save_hf(Qwen3(written, rngs=nnx.Rngs(0)), tmp_path / "ckpt")
    cd = _demo_dict()
    cd.model.preset = ""
    cd.model.hf_path = str(tmp_path / "ckpt")
    cd.model.remat = not written.remat
    cd.model.dtype = "float32" if written.dtype == "bfloat16" else "bfloat16"
    cd.model.attention_query_chunk = 8
    cfg = config_lib.from_config_dict(cd)
    resolved = cfg.model.architecture()
    assert (resolved.remat, resolved.dtype, resolved.attention_query_chunk) == (
        cd.model.remat,
        cd.model.dtype,
        8,
    )
    mesh = make_mesh(cfg.mesh, jax.devices()[: cfg.mesh.size])
    graphdef, params = trainer.initial_params(cfg, resolved, mesh)
    built = nnx.merge(graphdef, params).config
    for field in dataclasses.fields(resolved):
        assert getattr(built, field.name) == getattr(resolved, field.name), field.name


def test_plan_and_main_build_the_same_model_and_learner():
    # main: config file -> Config -> architecture + StepSettings.from_config (its start-up).
    cd = config_lib.load_config_file(str(CONFIGS / "qwen3_8b_chem.py") + ":method=srpo")
    cd.model.random_init = True
    cfg = config_lib.from_config_dict(cd)
    main_model, main_learner = cfg.model.architecture(), StepSettings.from_config(cfg)
    plan_model, plan_learner = plan.step_program_settings(cfg)
    assert plan_model == main_model
    assert plan_learner == main_learner
