"""Qwen3 dense decoder (Flax NNX), its presets, KV cache and HF safetensors I/O."""

from srpo_jax.model.config import (
    PRESETS,
    Qwen3Config,
    qwen3_0p6b,
    qwen3_1p7b,
    qwen3_4b,
    qwen3_8b,
    qwen3_14b,
    qwen3_32b,
    tiny,
)
from srpo_jax.model.hf_io import load_hf, save_hf, save_hf_params
from srpo_jax.model.kv_cache import KVCache, init_cache
from srpo_jax.model.qwen3 import Qwen3

__all__ = [
    "PRESETS",
    "KVCache",
    "Qwen3",
    "Qwen3Config",
    "init_cache",
    "load_hf",
    "qwen3_0p6b",
    "qwen3_14b",
    "qwen3_1p7b",
    "qwen3_32b",
    "qwen3_4b",
    "qwen3_8b",
    "save_hf",
    "save_hf_params",
    "tiny",
]
