"""Independent reference for the model tests: tiny random transformers Qwen3ForCausalLM.

Every parameter (norm scales included) is randomised so that a swapped or mis-transposed
weight shows up in the logits. Imported by the tests in this folder (pytest puts the folder
on sys.path since tests/ folders carry no __init__.py).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers


def hf_config(
    *, tie=False, layers=2, heads=4, kv_heads=2, head_dim=16, hidden=64, mlp=96, vocab=160
):
    return transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )


def make_hf_model(seed=0, **config_kwargs) -> transformers.Qwen3ForCausalLM:
    """A random fp32 Qwen3ForCausalLM (eval mode, eager attention)."""
    torch.manual_seed(seed)
    config = hf_config(**config_kwargs)
    config._attn_implementation = "eager"
    model = transformers.Qwen3ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model


def save(model, path, **kwargs) -> str:
    model.save_pretrained(path, **kwargs)
    return str(path)


def hf_logits(model, ids_BT, mask_BT=None, positions_BT=None) -> np.ndarray:
    """fp32 logits from transformers; positions passed explicitly (its default ignores padding)."""
    kwargs = {}
    if mask_BT is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(mask_BT), dtype=torch.long)
    if positions_BT is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(positions_BT), dtype=torch.long)
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids_BT), dtype=torch.long), **kwargs)
    return out.logits.float().numpy()


def left_padded(rng: np.random.RandomState, vocab: int, pads: list[int], length: int):
    """ids [B, length] and mask with pads[b] leading pad tokens per row, and the
    left-padding positions (count of real tokens before each, pads at 0)."""
    ids = rng.randint(0, vocab, (len(pads), length)).astype(np.int32)
    mask = np.ones((len(pads), length), np.int32)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
        ids[b, :p] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions
