"""Qwen3 dense decoder (Flax NNX), its presets, KV cache and HF safetensors I/O.

Names load on first use (PEP 562), so importing one submodule, such as the
package's config, does not import the others or jax.
"""

from srpo_jax.lazy_exports import resolver

_HOME = {
    "KVCache": "kv_cache",
    "PRESETS": "config",
    "Qwen3": "qwen3",
    "Qwen3Config": "config",
    "init_cache": "kv_cache",
    "load_hf": "hf_io",
    "qwen3_0p6b": "config",
    "qwen3_14b": "config",
    "qwen3_1p7b": "config",
    "qwen3_32b": "config",
    "qwen3_4b": "config",
    "qwen3_8b": "config",
    "save_hf": "hf_io",
    "save_hf_params": "hf_io",
    "tiny": "config",
}
__all__ = [
    "KVCache",
    "PRESETS",
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

__getattr__ = resolver(__name__, _HOME)
