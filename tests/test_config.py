"""Config files load and validate; SPEC 10 values; clear errors for bad keys and values.

Expected numbers are copied from SPEC.md sections 10 and 12, not from the code under test.
"""

import dataclasses
import importlib.util
import inspect
import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from srpo_jax import config as config_lib
from srpo_jax.config import ConfigError, from_config_dict, to_dict
from srpo_jax.learner.config import StepSettings

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
METHODS = ["grpo", "sdpo", "srpo", "srpo_no_dw", "advantage_mix"]
# SPEC 10: learning rate and mini-batch (prompts) per method; SRPO's ablations follow SRPO.
SPEC_LR = {
    "grpo": 1e-6,
    "sdpo": 1e-5,
    "srpo": 5.5e-6,
    "srpo_no_dw": 5.5e-6,
    "advantage_mix": 5.5e-6,
}
# What the config tree must not import (each costs seconds, or starts a backend).
HEAVY_LIBRARIES = {"jax", "jaxlib", "optax", "orbax", "flax", "transformers"}
SPEC_MINI = {"grpo": 8, "sdpo": 32, "srpo": 32, "srpo_no_dw": 32, "advantage_mix": 32}


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and "python -m srpo_jax.main" in module.__doc__, name
    return module.get_config(arg) if arg is not None else module.get_config()


def resolve(name: str, arg: str | None = None, **dotted) -> config_lib.Config:
    cd = load(name, arg)
    if name.startswith("qwen3"):
        cd.model.hf_path = "/models/qwen3"  # benchmark files need pretrained weights
    for key, value in dotted.items():
        node = cd
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return from_config_dict(cd)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.py")))
def test_every_config_file_loads_and_validates(name, method):
    cfg = resolve(name, f"method={method}")
    assert cfg.algo.method == method
    assert cfg.train.prompts_per_step % cfg.train.mini_batch_prompts == 0
    if name != "demo.py":
        assert cfg.optim.lr == SPEC_LR[method]
        assert cfg.train.mini_batch_prompts == SPEC_MINI[method]
    assert from_config_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg  # JSON round trip


def test_config_files_are_locked():
    cd = load("qwen3_8b_chem.py", "method=srpo")
    with pytest.raises(AttributeError, match="lrr"):
        cd.optim.lrr = 1.0


def test_qwen3_8b_chem_srpo_is_the_paper_protocol():
    cfg = resolve("qwen3_8b_chem.py", "method=srpo")
    assert cfg.data.task == "chem" and cfg.model.preset == "qwen3_8b"
    # SPEC 10 table.
    assert (cfg.train.prompts_per_step, cfg.algo.group_size) == (32, 8)
    assert cfg.train.mini_batch_prompts == 32 and cfg.num_updates_per_step == 1
    assert cfg.optim.lr == 5.5e-6 and cfg.optim.warmup_steps == 10
    assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.weight_decay) == (0.9, 0.999, 0.01)
    assert cfg.optim.grad_clip == 1.0
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k) == (1.0, 1.0, -1)
    assert (cfg.data.max_prompt_len, cfg.data.max_response_len) == (2048, 8192)
    assert (cfg.eval.num_samples, cfg.eval.temperature, cfg.eval.top_p) == (16, 0.6, 0.95)
    assert cfg.eval.every_steps == 5
    # SPEC 1-9 defaults.
    a = cfg.algo
    assert (a.clip_low, a.clip_high, a.dual_clip, a.tis_cap, a.is_clip) == (
        0.2,
        0.28,
        3.0,
        2.0,
        2.0,
    )
    assert (a.topk, a.alpha, a.tau, a.add_tail) == (100, 0.5, 1.0, True)
    assert (a.entropy_over, a.loss_agg) == ("vocab", "token-mean")
    assert (a.success_threshold, a.ema_rate, a.adv_mix_lambda) == (0.5, 0.05, 0.1)
    assert a.max_reprompt_len == 10240
    # The tokenizer ships with the weights.
    assert cfg.tokenizer.path == cfg.model.hf_path


def test_grpo_takes_four_updates_per_step():
    cfg = resolve("qwen3_8b_chem.py", "method=grpo")
    assert (cfg.optim.lr, cfg.train.mini_batch_prompts, cfg.num_updates_per_step) == (1e-6, 8, 4)


def test_method_override_picks_method_defaults_unless_set():
    cfg = resolve("qwen3_4b_bio.py", "method=srpo", algo__method="sdpo")
    assert (cfg.optim.lr, cfg.train.mini_batch_prompts) == (1e-5, 32)
    cfg = resolve("qwen3_4b_bio.py", "method=grpo", optim__lr=3e-6)
    assert cfg.optim.lr == 3e-6


def test_base_file_matches_dataclass_defaults():
    """configs/base.py spells the defaults out; they must not drift from config.py's."""
    assert from_config_dict(load("base.py")) == config_lib.Config()


@pytest.mark.parametrize(
    "preset, expected",
    [  # SPEC 12: layers, hidden, MLP, q heads, kv heads, tied
        ("qwen3_8b", (36, 4096, 12288, 32, 8, False)),
        ("qwen3_4b", (36, 2560, 9728, 32, 8, True)),
    ],
)
def test_qwen3_model_presets(preset, expected):
    cfg = resolve(f"{preset}_chem.py", "method=srpo", model__random_init=True)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=""))
    m = cfg.model.architecture()
    got = (m.num_layers, m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads)
    assert got + (m.tie_embeddings,) == expected
    assert (m.vocab_size, m.head_dim, m.rms_norm_eps, m.rope_theta) == (151936, 128, 1e-6, 1e6)
    assert m.max_position_embeddings == 40960 and m.dtype == "bfloat16"


def test_hf_path_architecture_is_checked_against_preset(tmp_path):
    from srpo_jax.model.config import qwen3_4b

    (tmp_path / "config.json").write_text(json.dumps(qwen3_4b().to_hf_dict()))
    cfg = resolve("qwen3_4b_chem.py", "method=srpo", model__hf_path=str(tmp_path))
    assert cfg.model.architecture().hidden_size == 2560
    cfg = resolve("qwen3_8b_chem.py", "method=srpo", model__hf_path=str(tmp_path))
    with pytest.raises(
        ConfigError, match="does not hold config.model.preset 'qwen3_8b'.*hidden_size"
    ):
        cfg.model.architecture()
    cfg = resolve("qwen3_8b_chem.py", "method=srpo", model__hf_path=str(tmp_path), model__preset="")
    assert cfg.model.architecture().num_layers == 36 and cfg.model.architecture().tie_embeddings


def test_demo_model_is_tiny_and_fits_the_tiny_tokenizer():
    cfg = resolve("demo.py")
    m = cfg.model.architecture()
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim) == (
        2,
        64,
        4,
        2,
        16,
    )
    from srpo_jax.data.tokenizer import build_tiny_tokenizer

    tiny_vocab = inspect.signature(build_tiny_tokenizer).parameters["vocab_size"].default
    assert (
        m.vocab_size == tiny_vocab and cfg.data.task == "synthetic" and cfg.rollout.engine == "jax"
    )
    assert cfg.warmup.steps > 0 and cfg.tokenizer.path == ""
    assert cfg.algo.topk < m.vocab_size


def test_unknown_keys_name_the_dotted_key_and_close_match():
    with pytest.raises(
        ConfigError, match=r"config\.optim\.lrr \(did you mean config\.optim\.lr\?\)"
    ):
        from_config_dict({"optim": {"lrr": 1e-5}})
    with pytest.raises(ConfigError, match=r"config\.optimm .*did you mean config\.optim\b"):
        from_config_dict({"optimm": {"lr": 1e-5}})
    with pytest.raises(
        ConfigError, match=r"config\.rollout\.sglang\.url .*config\.rollout\.sglang\.urls"
    ):
        from_config_dict({"rollout": {"sglang": {"url": ["http://x"]}}})
    with pytest.raises(ConfigError, match=r"config\.model\.overrides\.num_layer .*num_layers"):
        from_config_dict({"model": {"overrides": {"num_layer": 3}}})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim__lr", -1.0, "config.optim.lr must be > 0, got -1.0"),
        ("optim__lr", "fast", "config.optim.lr must be of type float, got 'fast'"),
        ("algo__method", "ppo", "config.algo.method must be one of"),
        ("algo__group_size", 1, "config.algo.group_size must be >= 2, got 1"),
        ("algo__alpha", 1.5, "config.algo.alpha must be in [0, 1], got 1.5"),
        ("algo__entropy_over", "bucket", "config.algo.entropy_over must be one of"),
        ("algo__add_tail", 1, "config.algo.add_tail must be of type bool, got 1"),
        ("data__task", "chemistry", "config.data.task must be one of"),
        ("model__dtype", "fp16", "config.model.dtype must be one of"),
        ("model__attention_query_chunk", -1, "config.model.attention_query_chunk must be >= 0"),
        ("model__preset", "qwen3_9b", "config.model.preset must be one of"),
        ("rollout__top_p", 0.0, "config.rollout.top_p must be in (0, 1], got 0.0"),
        ("eval__top_p", 1.5, "config.eval.top_p must be in (0, 1], got 1.5"),
        ("train__mini_batch_prompts", 5, "config.train.mini_batch_prompts must divide"),
        ("train__micro_batch_rows", 7, "config.train.micro_batch_rows must divide"),
        ("train__fused_implementation", "triton", "config.train.fused_implementation"),
        ("train__fused_grad_mode", "backward", "config.train.fused_grad_mode must be one of"),
        ("rollout__engine", "sglang", "config.rollout.sglang.urls is empty"),
        ("checkpoint__keep", 0, "config.checkpoint.keep must be >= 1, got 0"),
        ("mesh__fsdp", 0, "config.mesh"),
    ],
)
def test_invalid_values_name_key_and_value(key, value, message):
    with pytest.raises(ConfigError) as err:
        _raw(key, value)
    assert message in str(err.value)


def _raw(key: str, value) -> None:
    """Sets one value in base.py's dict; a plain dict, because ConfigDict itself refuses
    type-changing assignments and config files could still write them."""
    d = load("base.py").to_dict()
    node = d
    *parents, last = key.split("__")
    for p in parents:
        node = node[p]
    node[last] = value
    from_config_dict(d)


def test_rows_must_split_over_batch_mesh_axes():
    # 16 rows per micro-batch in the benchmark configs: 32 batch shards cannot split them.
    with pytest.raises(ConfigError, match=r"divisible by mesh.data \* mesh.fsdp = 32"):
        resolve("qwen3_8b_chem.py", "method=srpo", mesh__fsdp=32)


def test_packing_resolves_pack_len_and_refuses_rows_or_budgets_that_do_not_fit():
    # The demo's longest padded row is the teacher's: a 256-token reprompt bucket + 16.
    assert resolve("demo.py", train__packed=True).train.pack_len == 272
    assert resolve("demo.py").train.pack_len == 0  # padded runs resolve nothing
    with pytest.raises(
        ConfigError,
        match=r"config.data.max_prompt_len \+ config.data.max_response_len = 144 is longer "
        r"than config.train.pack_len = 100",
    ):
        resolve("demo.py", train__packed=True, train__pack_len=100, algo__max_reprompt_len=64)
    with pytest.raises(ConfigError, match=r"config.algo.max_reprompt_len \+ config.data"):
        resolve("demo.py", train__packed=True, train__pack_len=200)
    with pytest.raises(
        ConfigError, match="config.train.micro_batch_tokens = 100 is less than .*pack_len = 272"
    ):
        resolve("demo.py", train__packed=True, train__micro_batch_tokens=100)
    with pytest.raises(  # streams split over data x fsdp = 4: one stream per shard at least
        ConfigError, match=r"micro_batch_tokens = 816 .* mesh.data \* mesh.fsdp = 1088: a micro"
    ):
        resolve(
            "demo.py", train__packed=True, train__micro_batch_tokens=816, mesh__data=2, mesh__fsdp=2
        )
    with pytest.raises(ConfigError, match="read only with config.train.packed=True"):
        resolve("demo.py", train__micro_batch_tokens=4096)


def test_full_size_model_without_weights_is_refused():
    cd = load("qwen3_8b_chem.py", "method=srpo")
    with pytest.raises(ConfigError, match="config.model.hf_path is empty for preset 'qwen3_8b'"):
        from_config_dict(cd)
    cd.model.random_init = True
    assert from_config_dict(cd).model.hf_path == ""


def test_check_mesh_names_device_count():
    cfg = resolve("qwen3_8b_chem.py", "method=srpo")
    config_lib.check_mesh(cfg, 8)
    with pytest.raises(ConfigError, match=r"must equal the number of devices \(4\)"):
        config_lib.check_mesh(cfg, 4)


def test_config_argument_errors():
    with pytest.raises(ConfigError, match="unknown config argument 'metod'.*did you mean method"):
        load("demo.py", "metod=srpo")
    with pytest.raises(ConfigError, match="config.algo.method"):
        load("qwen3_8b_chem.py", "method=dpo")


def test_sections_are_frozen():
    cfg = resolve("demo.py")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0


def test_config_tree_imports_no_jax():
    """Building every config (the defaults, each config file for each method, the learner's
    settings) imports none of the heavy libraries: --print_config and a config error never
    load them. In a fresh interpreter, since this one has jax loaded already."""
    script = f"""
import json, pathlib, sys
from srpo_jax import config as config_lib
from srpo_jax.learner.config import StepSettings

config_lib.Config()
for path in sorted(pathlib.Path({str(CONFIGS)!r}).glob("*.py")):
    for method in {METHODS!r}:
        cd = config_lib.load_config_file(f"{{path}}:method={{method}}")
        if path.name.startswith("qwen3"):
            cd.model.hf_path = "/models/qwen3"
        cfg = config_lib.from_config_dict(cd)
        StepSettings.from_config(cfg)
        json.dumps(config_lib.to_dict(cfg))
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(proc.stdout))
    assert "srpo_jax" in loaded  # the script did import the package under test
    assert loaded.isdisjoint(HEAVY_LIBRARIES), sorted(loaded & HEAVY_LIBRARIES)


def test_step_settings_from_config_holds_the_run_sections():
    cfg = resolve("qwen3_8b_chem.py", "method=grpo", rollout__temperature=0.7)
    settings = StepSettings.from_config(cfg)
    assert settings.algo == cfg.algo and settings.train == cfg.train
    assert settings.optim.lr == SPEC_LR["grpo"] and settings.optim == cfg.optim
    assert settings.temperature == 0.7
    # Greedy rollouts (temperature 0) are scored at temperature 1.
    greedy = resolve("demo.py", "method=srpo", rollout__temperature=0.0)
    assert StepSettings.from_config(greedy).temperature == 1.0
