"""Qwen3 dense architecture hyper-parameters, the published presets, HF config.json I/O, and
the run config's `model` section (ModelConfig).

The preset numbers are the published Qwen3 config.json values (SPEC section 12). The HF
dictionary conversion is what lets `hf_io` read any Qwen3 checkpoint directory and write one
that transformers' `AutoModelForCausalLM.from_pretrained` accepts. `read_hf_config` is the
only place in srpo_jax that reads a config.json; `ModelConfig.architecture` resolves the
run's Qwen3Config from it (or from a preset) and everything downstream (learner, rollout
engine, memory plan) builds that one object.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib
from typing import Any

from srpo_jax.config_checks import ConfigError, one_of, require

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """Shape and numerics of a Qwen3 dense decoder.

    `dtype` is the compute dtype (activations and matmul inputs); `param_dtype` is the
    storage dtype of the master parameters. Softmax, log-softmax and the logits are fp32
    whatever the compute dtype.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: bool = False
    scan_layers: bool = True
    # Queries per attention block (0: all at once). Exact; bounds the fp32 scores to
    # [B, heads, attention_query_chunk, S] per layer instead of [B, heads, T, S].
    attention_query_chunk: int = 1024
    # "auto" | "xla" | "cudnn" | "splash" (srpo_jax.model.attention); auto picks by platform.
    attention_impl: str = "auto"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Qwen3Config.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"Qwen3Config.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if not isinstance(self.attention_query_chunk, int) or self.attention_query_chunk < 0:
            raise ValueError(
                "Qwen3Config.attention_query_chunk must be an int >= 0 (0: no chunking), "
                f"got {self.attention_query_chunk!r}"
            )
        if self.attention_impl not in ("auto", "xla", "cudnn", "splash"):
            raise ValueError(
                "Qwen3Config.attention_impl must be auto, xla, cudnn or splash, got "
                f"{self.attention_impl!r}"
            )
        if self.head_dim % 2:
            raise ValueError(f"Qwen3Config.head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(
                    f"Qwen3Config.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}"
                )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(
                f"Qwen3Config.rms_norm_eps and rope_theta must be > 0, got "
                f"{self.rms_norm_eps} and {self.rope_theta}"
            )

    @property
    def compute_dtype(self):
        import jax.numpy as jnp  # here, not at the top: the config tree imports no jax

        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.param_dtype)

    def replace(self, **overrides: Any) -> Qwen3Config:
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> Qwen3Config:
        """Reads a transformers Qwen3 config.json dictionary (rope_theta at top level or in
        rope_parameters / rope_scaling); unknown keys are ignored, unsupported features refused."""
        model_type = d.get("model_type", "qwen3")
        if model_type != "qwen3":
            raise ValueError(f"config.json model_type must be 'qwen3', got {model_type!r}")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"config.json rope_type {rope_type!r} is not supported (only 'default')"
            )
        rope_theta = d.get("rope_theta", rope.get("rope_theta", 1e6))
        if d.get("attention_bias", False):
            raise ValueError("config.json attention_bias=true is not supported by Qwen3 here")
        if d.get("use_sliding_window", False):
            raise ValueError("config.json use_sliding_window=true is not supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act must be 'silu', got {d['hidden_act']!r}")
        num_heads = d["num_attention_heads"]
        kwargs = dict(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=d.get("num_key_value_heads") or num_heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // num_heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=d.get("max_position_embeddings", 40960),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self, *, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The transformers config.json for this architecture. rope_theta is written both at
        top level (older readers, SGLang) and in rope_parameters (transformers >= 5)."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": self.num_layers,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }


def _preset(layers, hidden, mlp, heads, kv_heads, tied, overrides) -> Qwen3Config:
    base = Qwen3Config(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        tie_embeddings=tied,
    )
    return dataclasses.replace(base, **overrides)


def qwen3_0p6b(**overrides: Any) -> Qwen3Config:
    return _preset(28, 1024, 3072, 16, 8, True, overrides)


def qwen3_1p7b(**overrides: Any) -> Qwen3Config:
    return _preset(28, 2048, 6144, 16, 8, True, overrides)


def qwen3_4b(**overrides: Any) -> Qwen3Config:
    return _preset(36, 2560, 9728, 32, 8, True, overrides)


def qwen3_8b(**overrides: Any) -> Qwen3Config:
    return _preset(36, 4096, 12288, 32, 8, False, overrides)


def qwen3_14b(**overrides: Any) -> Qwen3Config:
    return _preset(40, 5120, 17408, 40, 8, False, overrides)


def qwen3_32b(**overrides: Any) -> Qwen3Config:
    return _preset(64, 5120, 25600, 64, 8, False, overrides)


def tiny(**overrides: Any) -> Qwen3Config:
    """A CPU-test-sized Qwen3: GQA (4 q heads over 2 kv heads), untied, fp32 compute."""
    base = Qwen3Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_embeddings=False,
        max_position_embeddings=512,
        dtype="float32",
    )
    return dataclasses.replace(base, **overrides)


PRESETS = {
    "qwen3_0p6b": qwen3_0p6b,
    "qwen3_1p7b": qwen3_1p7b,
    "qwen3_4b": qwen3_4b,
    "qwen3_8b": qwen3_8b,
    "qwen3_14b": qwen3_14b,
    "qwen3_32b": qwen3_32b,
    "tiny": tiny,
}

# Presets are also reachable as Qwen3Config.qwen3_8b(...) etc., for callers holding only the class.
for _name, _fn in PRESETS.items():
    setattr(Qwen3Config, _name, staticmethod(_fn))


def read_hf_config(hf_dir, **overrides: Any) -> Qwen3Config:
    """The Qwen3Config of an HF checkpoint directory's config.json, `overrides` applied.
    FileNotFoundError (its argument the missing path) when there is no config.json."""
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(str(path))
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"
        ) from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    try:
        return Qwen3Config.from_hf_dict(d, **overrides)
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and weights. preset names a Qwen3Config preset; hf_path a local HF dir."""

    preset: str = "tiny"  # "" = take the architecture from hf_path/config.json
    hf_path: str = ""  # local HF checkpoint dir (config.json + safetensors); "" = random init
    overrides: dict = dataclasses.field(default_factory=dict)  # Qwen3Config field -> value
    dtype: str = "bfloat16"  # compute dtype; params and EMA teacher stay fp32
    remat: bool = False
    attention_query_chunk: int = 1024  # queries per attention block; 0 = all at once
    # auto | xla | cudnn | splash (srpo_jax.model.attention): auto = cudnn on GPU, splash on TPU
    attention_impl: str = "auto"
    # A full-size preset without weights trains a random network: refuse unless asked for
    # (throughput tests), so a forgotten hf_path cannot waste a 10-hour run.
    random_init: bool = False

    def __post_init__(self):
        one_of("model.preset", self.preset, (*PRESETS, ""))
        require(
            bool(self.preset or self.hf_path),
            "model.hf_path",
            "set when model.preset is empty",
            self.hf_path,
        )
        one_of("model.dtype", self.dtype, ("bfloat16", "float32"))
        one_of("model.attention_impl", self.attention_impl, ("auto", "xla", "cudnn", "splash"))
        require(
            self.attention_query_chunk >= 0,
            "model.attention_query_chunk",
            ">= 0 (0: no query blocks)",
            self.attention_query_chunk,
        )
        needs_weights = (
            self.preset not in ("tiny", "") and not self.hf_path and not self.random_init
        )
        if needs_weights:
            raise ConfigError(
                f"config.model.hf_path is empty for preset {self.preset!r}: pass the pretrained "
                "weights with --config.model.hf_path=/path/to/hf_dir (or set "
                "config.model.random_init=True to train a randomly initialised network)"
            )
        # dtype, remat, attention_query_chunk and attention_impl have their own keys;
        # everything else in Qwen3Config may be overridden.
        own_keys = ("dtype", "remat", "attention_query_chunk", "attention_impl")
        allowed = [f.name for f in dataclasses.fields(Qwen3Config) if f.name not in own_keys]
        for name in self.overrides:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=2)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(
                    f"unknown config key config.model.overrides.{name}{hint}; "
                    f"valid: {', '.join(allowed)}"
                )

    def architecture(self):
        """The Qwen3Config to build: hf_path/config.json when weights are given (checked
        against the preset, if one is named), else the preset; overrides applied to either."""
        extra = {
            **self.overrides,
            "dtype": self.dtype,
            "remat": self.remat,
            "attention_query_chunk": self.attention_query_chunk,
            "attention_impl": self.attention_impl,
        }
        try:
            preset = PRESETS[self.preset](**extra) if self.preset else None
        except (TypeError, ValueError) as e:  # an override out of range or of a wrong type
            raise ConfigError(f"config.model.overrides: {e}") from None
        if not self.hf_path:
            return preset
        try:
            loaded = read_hf_config(self.hf_path, **extra)
        except FileNotFoundError as e:
            raise ConfigError(
                f"config.model.hf_path has no config.json: {str(e)!r} not found"
            ) from None
        except ValueError as e:  # config.json unreadable, or values out of range
            raise ConfigError(str(e)) from None
        if preset is not None and preset != loaded:
            diffs = [
                f"{f.name} {getattr(loaded, f.name)!r} vs {getattr(preset, f.name)!r}"
                for f in dataclasses.fields(Qwen3Config)
                if getattr(loaded, f.name) != getattr(preset, f.name)
            ]
            raise ConfigError(
                f"config.model.hf_path {self.hf_path!r} does not hold config.model.preset "
                f"{self.preset!r} (config.json vs preset: {', '.join(diffs)}); fix one of them or "
                "set --config.model.preset='' to take the architecture from config.json"
            )
        return loaded
