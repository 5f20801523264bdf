"""Next-token sampling maths for the embedded JAX engine: keys, temperature, top-k, top-p.

Everything here is a pure function on [B, V] logits, jit-friendly and shape-static.

Conventions (chosen to match the inference servers the trainer may use instead):

- temperature 0 is greedy (argmax). Its log-probs are taken at temperature 1, as SGLang does
  on its all-greedy path.
- top-k keeps the k highest logits (exactly k; ties broken by lax.top_k's lowest index).
- top-p is applied after top-k, on the temperature-scaled distribution renormalised over the
  top-k survivors (the HF / vLLM order). It keeps the smallest prefix of the sorted tokens
  whose mass reaches top_p: token i survives iff the mass strictly before it is < top_p, so
  the most likely token always survives.
- Returned log-probs ("scaled", the default) are log_softmax(logits / T) over the full
  vocabulary, before top-k/top-p renormalisation: the temperature-scaled policy the
  trainer can recompute without knowing the filter. SGLang (python/sglang/srt/layers/
  sampler.py) divides by the temperature before its softmax and returns log-probs of that
  distribution (recent versions renormalise over top-p only; `RETURN_ORIGINAL_LOGPROB`
  switches to temperature 1); vLLM's default `raw_logprobs` is before temperature. At the
  training setting (T = 1, top-p 1, top-k off) all of these coincide. "processed" returns
  the log-prob under the filtered, renormalised distribution actually sampled from.

Keys: one per (seed, step, row, token position), built by folding each in turn, so two
steps never share noise, a seed + step reproduces exactly, and a row's noise does not
depend on how many other rows share its batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOGPROB_MODES = ("scaled", "processed")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """The static (compile-time) part of sampling; temperature and top_p values stay traced.

    greedy: argmax instead of sampling. top_k: None = off. use_top_p: whether top_p < 1
    (skipping it avoids sorting the vocabulary). logprobs: "scaled" or "processed".
    """

    greedy: bool = False
    top_k: int | None = None
    use_top_p: bool = False
    logprobs: str = "scaled"

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"SamplerSpec.top_k must be None (off) or >= 1, got {self.top_k}")
        if self.logprobs not in LOGPROB_MODES:
            raise ValueError(
                f"SamplerSpec.logprobs must be one of {LOGPROB_MODES}, got {self.logprobs!r}"
            )

    @property
    def filters(self) -> bool:
        return self.top_k is not None or self.use_top_p


def row_keys(seed, step, rows_B) -> jax.Array:
    """Per-row keys for one generate call: fold seed -> step -> global row index."""
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(rows_B)


def position_keys(keys_B, t) -> jax.Array:
    """Keys for token position t of every row (t = 0 is the first sampled token)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)


def scaled_log_softmax(logits_BV, temperature) -> jax.Array:
    """log_softmax(logits / temperature) in fp32 (fp32: bf16 logsumexp over 150k tokens drifts)."""
    return jax.nn.log_softmax(logits_BV.astype(jnp.float32) / temperature, axis=-1)


def _candidates(scaled_BV, spec: SamplerSpec):
    """Candidate tokens in descending order: [B, K] values and vocabulary ids.

    K = top_k when top-k is on (lax.top_k avoids a full sort), else the whole vocabulary.
    """
    vocab = scaled_BV.shape[-1]
    k = vocab if spec.top_k is None else min(spec.top_k, vocab)
    return jax.lax.top_k(scaled_BV, k)


def _top_p_keep(sorted_BK, top_p) -> jax.Array:
    """Keep mask over descending-sorted scaled logits: mass strictly before i < top_p."""
    probs_BK = jax.nn.softmax(sorted_BK, axis=-1)  # already fp32
    mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
    keep_BK = mass_before_BK < top_p
    # Rounding in the cumsum must never drop the most likely token.
    return keep_BK.at[:, 0].set(True)


def _filtered_sorted(scaled_BV, top_p, spec: SamplerSpec):
    """(masked sorted scaled logits [B, K] with -inf outside the kept set, ids [B, K])."""
    sorted_BK, ids_BK = _candidates(scaled_BV, spec)
    if spec.use_top_p:
        sorted_BK = jnp.where(_top_p_keep(sorted_BK, top_p), sorted_BK, -jnp.inf)
    return sorted_BK, ids_BK


def filtered_logits(logits_BV, temperature, top_p, spec: SamplerSpec) -> jax.Array:
    """Temperature-scaled fp32 logits with -inf on every token the filters remove [B, V]."""
    scaled_BV = logits_BV.astype(jnp.float32) / temperature
    if not spec.filters:
        return scaled_BV
    masked_BK, ids_BK = _filtered_sorted(scaled_BV, top_p, spec)
    rows_B1 = jnp.arange(scaled_BV.shape[0])[:, None]
    return jnp.full_like(scaled_BV, -jnp.inf).at[rows_B1, ids_BK].set(masked_BK)


def sample(logits_BV, keys_B, temperature, top_p, spec: SamplerSpec):
    """Samples one token per row; returns (tokens_B int32, logprobs_B float32).

    keys_B: one key per row for this position (see position_keys). temperature and top_p are
    traced scalars; temperature is ignored when spec.greedy.
    """
    logits_BV = logits_BV.astype(jnp.float32)  # fp32: sampling and log-probs need full precision
    if spec.greedy:
        tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        logp_BV = scaled_log_softmax(logits_BV, 1.0)
        return tokens_B, jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]

    scaled_BV = logits_BV / temperature
    logp_BV = scaled_log_softmax(logits_BV, temperature)
    draw = jax.vmap(jax.random.categorical)
    if not spec.filters:
        tokens_B = draw(keys_B, scaled_BV).astype(jnp.int32)
        return tokens_B, jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]

    # Sample in sorted-candidate space: with top-k on this is [B, k], not [B, V].
    masked_BK, ids_BK = _filtered_sorted(scaled_BV, top_p, spec)
    choice_B = draw(keys_B, masked_BK)
    tokens_B = jnp.take_along_axis(ids_BK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if spec.logprobs == "processed":
        kept_logp_BK = jax.nn.log_softmax(masked_BK, axis=-1)
        return tokens_B, jnp.take_along_axis(kept_logp_BK, choice_B[:, None], axis=-1)[:, 0]
    return tokens_B, jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]
