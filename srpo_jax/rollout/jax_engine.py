"""The embedded rollout engine: batched prefill plus KV-cache decode of a Qwen3, in JAX.

One `generate` call is one jitted function: a left-padded prefill of each distinct prompt
(once, not n times), its cache rows repeated n times, then a lax.while_loop of decode steps
that samples a token per row (sampling.py) until every row has hit a stop token or
max_new_tokens. Shapes are static per bucket, so a training run
compiles a handful of programs and never recompiles per step:

- prompt length P: the longest prompt rounded up to a prompt bucket (left padding, mask 0);
- prompts G rounded up to a batch bucket with dummy prompts whose rows are dropped; the
  decode batch is B = G * n rows (n is static: one program per group size);
- max_new_tokens rounded up to a new-token bucket R (the loop still stops at the real value,
  and as soon as every row is done);
- stop ids padded to a fixed count with -1.
Temperature, top-p, seed, step and the real max_new_tokens are traced values; greedy or not,
top-k and whether top-p is on are static (one compile per sampling setting, e.g. train and
eval). Default buckets are data.buckets.bucket_length's: powers of two, or finer with
length_buckets_per_octave for the prompt length and max_new_tokens.

Noise: the key of token t of row r is fold(fold(fold(key(seed), step), r), t) with r the
row's index in the returned Rollouts, so it does not depend on the batch bucket or padding.

Weights: `update_weights` re-binds the learner's device arrays (no host round trip); with
a mesh they are device_put to the rules-table shardings (a no-op when already there), and
with `weights_dtype` cast on device, e.g. to bf16 to halve the engine's copy.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from srpo_jax import multihost
from srpo_jax import sharding as shd
from srpo_jax.data.buckets import bucket_length
from srpo_jax.model import kv_cache as kvc
from srpo_jax.model.qwen3 import Qwen3
from srpo_jax.rollout import sampling
from srpo_jax.rollout.engine import FINISH_LENGTH, FINISH_STOP, Rollouts, SamplingParams


def pick_bucket(
    n: int, buckets: Sequence[int] | None, what: str, *, minimum: int = 1, per_octave: int = 1
) -> int:
    """Smallest bucket >= n; buckets None means bucket_length(minimum, per_octave)."""
    if buckets is None:
        return bucket_length(n, minimum=minimum, per_octave=per_octave)
    fits = [b for b in sorted(buckets) if b >= n]
    if not fits:
        raise ValueError(f"{what} {n} exceeds the largest {what} bucket {max(buckets)}")
    return fits[0]


def _repeat_rows(cache: kvc.KVCache, n: int) -> kvc.KVCache:
    """Each row of the cache repeated n times in place (row g -> rows g*n .. g*n+n-1)."""
    fields = {}
    for name in cache._fields:
        if name not in kvc.CACHE_LOGICAL_AXES or "batch" not in kvc.CACHE_LOGICAL_AXES[name]:
            raise ValueError(f"KV cache field {name!r} has no 'batch' axis in CACHE_LOGICAL_AXES")
        axis = kvc.CACHE_LOGICAL_AXES[name].index("batch")
        fields[name] = jnp.repeat(getattr(cache, name), n, axis=axis)
    return type(cache)(**fields)


class DecodeInputs(NamedTuple):
    """The traced inputs of one generate call: left-padded distinct prompts [G, P] and their
    mask, the sampling scalars, the stop ids [S] (-1 padded) and the real row count."""

    prompt_GP: Any
    mask_GP: Any
    seed: Any
    step: Any
    temperature: Any
    top_p: Any
    max_new: Any
    stop_ids_S: Any
    num_rows: Any


@dataclasses.dataclass(frozen=True)
class DecodeShape:
    """What a generate program is compiled for: samples per prompt, the sampler's static
    settings and the new-token bucket."""

    n: int
    spec: sampling.SamplerSpec
    r_bucket: int


def _generate(graphdef, mesh, on_trace, params, x: DecodeInputs, shape: DecodeShape):
    """Prefill + decode loop -> (tokens_BR, logprobs_BR, lengths_B, stopped_B) on device.

    The G distinct prompts are prefilled once; their cache rows and last logits are then
    repeated n times, giving B = G * n rows (row r = g * n + j)."""
    on_trace()  # Python side effect: runs once per trace, i.e. once per compile.
    model = nnx.merge(graphdef, params)

    def constrain(cache):
        if mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, kvc.cache_shardings(mesh, cache))

    n, r_bucket = shape.n, shape.r_bucket
    g, p = x.prompt_GP.shape
    b = g * n
    cache = constrain(model.init_cache(g, p + r_bucket))
    logits_GV, cache = model.prefill(x.prompt_GP, x.mask_GP, cache)
    cache = constrain(_repeat_rows(cache, n))
    logits_BV = jnp.repeat(logits_GV, n, axis=0)
    keys_B = sampling.row_keys(x.seed, x.step, jnp.arange(b, dtype=jnp.int32))

    def pick(logits_BV, t):
        return sampling.sample(
            logits_BV, sampling.position_keys(keys_B, t), x.temperature, x.top_p, shape.spec
        )

    tok_B, logp_B = pick(logits_BV, 0)
    tokens_BR = jnp.zeros((b, r_bucket), jnp.int32).at[:, 0].set(tok_B)
    logps_BR = jnp.zeros((b, r_bucket), jnp.float32).at[:, 0].set(logp_B)
    # Rows of dummy prompts start finished so they never hold the loop open.
    stopped_B = _is_stop(tok_B, x.stop_ids_S) | (jnp.arange(b) >= x.num_rows)
    lengths_B = jnp.ones((b,), jnp.int32)
    init = (jnp.int32(1), tok_B, cache, tokens_BR, logps_BR, lengths_B, stopped_B)

    def cond(state):
        t, _, _, _, _, _, stopped_B = state
        return (t < x.max_new) & ~jnp.all(stopped_B)

    def body(state):
        t, prev_B, cache, tokens_BR, logps_BR, lengths_B, stopped_B = state
        logits_BV, cache = model.decode_step(prev_B, cache)
        tok_B, logp_B = pick(logits_BV, t)
        # Finished rows keep decoding (static shapes) but write pad: token 0, log-prob 0.
        active_B = ~stopped_B
        tokens_BR = tokens_BR.at[:, t].set(jnp.where(active_B, tok_B, 0))
        logps_BR = logps_BR.at[:, t].set(jnp.where(active_B, logp_B, 0.0))
        lengths_B = lengths_B + active_B.astype(jnp.int32)
        stopped_B = stopped_B | (active_B & _is_stop(tok_B, x.stop_ids_S))
        return t + 1, tok_B, cache, tokens_BR, logps_BR, lengths_B, stopped_B

    _, _, _, tokens_BR, logps_BR, lengths_B, stopped_B = jax.lax.while_loop(cond, body, init)
    return tokens_BR, logps_BR, lengths_B, stopped_B


def _is_stop(tokens_B, stop_ids_S):
    return jnp.any(tokens_B[:, None] == stop_ids_S[None, :], axis=-1)


class JaxEngine:
    """RolloutEngine that samples from a Qwen3 living on this process's devices.

    Args:
      model_config: the Qwen3Config of the policy.
      model_or_params: a Qwen3 module, or its nnx.Param state (nnx.State or the pure dict).
      mesh: optional ("data", "fsdp", "tensor") mesh; rows shard over data x fsdp and the
        params and KV cache follow the rules table. None: arrays stay where they are.
      pad_id: token used to left-pad prompts (masked out, so any id works).
      prompt_buckets / batch_buckets / max_new_tokens_buckets: allowed padded prompt length,
        number of distinct prompts, and max_new_tokens; None means powers of two (prompt
        length from 16, prompts from 1 or data-parallel size / n, new tokens from 16).
      length_buckets_per_octave: with prompt_buckets / max_new_tokens_buckets None, that
        many buckets per doubling of the length (data.buckets.bucket_length; 1: powers of two).
      max_stop_tokens: fixed length of the stop-id array (more stop ids raise).
      logprobs_mode: "scaled" (default, log_softmax(logits / T)) or "processed"; see
        sampling.py for how this matches SGLang.
      weights_dtype: cast the weights to this dtype on device when installing them.
      version: the weight version of the initial weights.
      copy_weights: keep a copy of the installed weights that no one else holds. The
        learner's train step donates its params, so an engine that samples from weights older
        than the learner's (rollout.overlap) must not share their buffers.
    """

    def __init__(
        self,
        model_config,
        model_or_params: Any,
        *,
        mesh: jax.sharding.Mesh | None = None,
        pad_id: int = 0,
        prompt_buckets: Sequence[int] | None = None,
        batch_buckets: Sequence[int] | None = None,
        max_new_tokens_buckets: Sequence[int] | None = None,
        length_buckets_per_octave: int = 1,
        max_stop_tokens: int = 8,
        logprobs_mode: str = "scaled",
        weights_dtype: str | None = None,
        version: int = 0,
        copy_weights: bool = False,
    ):
        if logprobs_mode not in sampling.LOGPROB_MODES:
            raise ValueError(
                f"JaxEngine logprobs_mode must be in {sampling.LOGPROB_MODES}: {logprobs_mode!r}"
            )
        if not 0 <= pad_id < model_config.vocab_size:
            raise ValueError(
                f"JaxEngine pad_id {pad_id} is outside [0, vocab_size={model_config.vocab_size})"
            )
        self.config = model_config
        self.mesh = mesh
        self.pad_id = int(pad_id)
        self.prompt_buckets = None if prompt_buckets is None else tuple(prompt_buckets)
        self.batch_buckets = None if batch_buckets is None else tuple(batch_buckets)
        self.max_new_tokens_buckets = (
            None if max_new_tokens_buckets is None else tuple(max_new_tokens_buckets)
        )
        self.length_buckets_per_octave = int(length_buckets_per_octave)
        self.max_stop_tokens = int(max_stop_tokens)
        self.logprobs_mode = logprobs_mode
        self.weights_dtype = None if weights_dtype is None else jnp.dtype(weights_dtype)
        self.num_traces = 0  # compiles of the generate program (one per trace)

        abstract = nnx.eval_shape(lambda: Qwen3(model_config, rngs=nnx.Rngs(0)))
        self._graphdef, self._template, rest = nnx.split(abstract, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError("JaxEngine supports Qwen3 modules whose state is nnx.Param only")

        def count_trace():
            self.num_traces += 1

        self._generate_jit = jax.jit(
            functools.partial(_generate, self._graphdef, mesh, count_trace),
            static_argnames=("shape",),
        )
        self._cast_jit = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(self.weights_dtype), p))
        self.copy_weights = bool(copy_weights)
        # jnp.copy: a cast to the dtype a leaf already has would hand back the same buffer.
        self._copy_jit = jax.jit(lambda p: jax.tree.map(lambda x: jnp.copy(self._cast(x)), p))
        if isinstance(model_or_params, nnx.Module):
            model_or_params = nnx.state(model_or_params, nnx.Param)
        self._params = None
        self.weight_version = int(version)
        self._install(model_or_params)

    # ----- weights --------------------------------------------------------------------------
    def _as_state(self, params) -> nnx.State:
        if not isinstance(params, nnx.State):
            state = jax.tree.map(lambda x: x, self._template)
            nnx.replace_by_pure_dict(state, params)
            params = state
        leaves = jax.tree.leaves(params)
        want = [x.shape for x in jax.tree.leaves(self._template)]
        if (
            jax.tree.structure(params) != jax.tree.structure(self._template)
            or any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # left unfilled
            or [tuple(np.shape(x)) for x in leaves] != want
        ):
            raise ValueError(
                "JaxEngine params do not match the Qwen3 parameter tree of model_config"
            )
        # Host (numpy) leaves are copied to device once; device arrays are kept as they are.
        return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params)

    def _cast(self, x):
        return x if self.weights_dtype is None else x.astype(self.weights_dtype)

    def _install(self, params) -> int:
        params = self._as_state(params)
        if self.mesh is not None:
            params = jax.device_put(params, shd.param_shardings(self.mesh, self._template))
        if self.copy_weights:
            params = self._copy_jit(params)
        elif self.weights_dtype is not None and any(
            x.dtype != self.weights_dtype for x in jax.tree.leaves(params)
        ):
            params = self._cast_jit(params)
        self._params = params
        return sum(int(x.nbytes) for x in jax.tree.leaves(params))

    def update_weights(self, params: Any, version: int) -> dict[str, float]:
        """Installs the learner's params (device arrays re-bound, never via the host)."""
        start = time.perf_counter()
        nbytes = self._install(params)
        jax.block_until_ready(self._params)
        self.weight_version = int(version)
        return {"sync/seconds": time.perf_counter() - start, "sync/bytes": float(nbytes)}

    def close(self) -> None:
        self._params = None

    # ----- generation -----------------------------------------------------------------------
    def _spec(self, sp: SamplingParams) -> sampling.SamplerSpec:
        return sampling.SamplerSpec(
            greedy=sp.temperature == 0.0,
            top_k=None if sp.top_k == -1 else min(sp.top_k, self.config.vocab_size),
            use_top_p=sp.top_p < 1.0,
            logprobs=self.logprobs_mode,
        )

    def _pack(self, prompt_token_ids, n):
        """Left-padded [G, P] ids and mask of the distinct prompts, G padded to a bucket."""
        vocab = self.config.vocab_size
        for i, ids in enumerate(prompt_token_ids):
            if len(ids) == 0:
                raise ValueError(f"JaxEngine.generate: prompt {i} is empty")
            if min(ids) < 0 or max(ids) >= vocab:
                raise ValueError(
                    f"JaxEngine.generate: prompt {i} has token ids outside [0, {vocab})"
                )
        dp = 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        # Enough prompts that the G * n rows divide over the data-parallel devices.
        g = pick_bucket(
            len(prompt_token_ids), self.batch_buckets, "prompts", minimum=max(1, dp // n)
        )
        p = pick_bucket(
            max(map(len, prompt_token_ids)),
            self.prompt_buckets,
            "prompt length",
            minimum=16,
            per_octave=self.length_buckets_per_octave,
        )
        prompt_GP = np.full((g, p), self.pad_id, np.int32)
        mask_GP = np.zeros((g, p), np.int32)
        for i, ids in enumerate(prompt_token_ids):
            prompt_GP[i, p - len(ids) :] = ids
            mask_GP[i, p - len(ids) :] = 1
        # Dummy prompts: one real (pad) token, so attention is never empty.
        mask_GP[len(prompt_token_ids) :, -1] = 1
        return prompt_GP, mask_GP

    def _put(self, x):
        if self.mesh is None:
            return jnp.asarray(x)
        spec = shd.fit_spec(
            shd.logical_to_spec(("batch",) + (None,) * (x.ndim - 1)), x.shape, dict(self.mesh.shape)
        )
        return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

    def _check_generate(self, prompt_token_ids, n: int, sp: SamplingParams) -> None:
        if self._params is None:
            raise RuntimeError("JaxEngine.generate called after close()")
        if any(x.is_deleted() for x in jax.tree.leaves(self._params)):
            raise RuntimeError(
                "JaxEngine weights were deleted (donated by the learner's train step?): call "
                "update_weights with the new params before generate, or set weights_dtype to copy"
            )
        if n < 1 or not prompt_token_ids:
            raise ValueError(
                f"JaxEngine.generate needs n >= 1 and prompts: n={n}, {len(prompt_token_ids)=}"
            )
        if len(sp.stop_token_ids) > self.max_stop_tokens:
            raise ValueError(
                f"{len(sp.stop_token_ids)} stop ids exceed max_stop_tokens={self.max_stop_tokens}"
            )

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        sampling_params: SamplingParams,
        *,
        step: int = 0,
    ) -> Rollouts:
        """Samples n completions per prompt; rows are prompt-major (r = p * n + j)."""
        sp = sampling_params
        self._check_generate(prompt_token_ids, n, sp)
        prompt_GP, mask_GP = self._pack(prompt_token_ids, n)
        rows = len(prompt_token_ids) * n
        r_bucket = pick_bucket(
            sp.max_new_tokens,
            self.max_new_tokens_buckets,
            "max_new_tokens",
            minimum=16,
            per_octave=self.length_buckets_per_octave,
        )
        stop_S = np.full((self.max_stop_tokens,), -1, np.int32)
        stop_S[: len(sp.stop_token_ids)] = sp.stop_token_ids
        inputs = DecodeInputs(
            self._put(prompt_GP),
            self._put(mask_GP),
            np.uint32(sp.seed % 2**32),
            np.uint32(step % 2**32),
            np.float32(sp.temperature if sp.temperature > 0 else 1.0),
            np.float32(sp.top_p),
            np.int32(sp.max_new_tokens),
            stop_S,
            np.int32(rows),
        )
        shape = DecodeShape(n=n, spec=self._spec(sp), r_bucket=r_bucket)
        if self.mesh is None:
            out = self._generate_jit(self._params, inputs, shape=shape)
        else:
            with jax.set_mesh(self.mesh):
                out = self._generate_jit(self._params, inputs, shape=shape)
        # Sharded over the data axes: other processes' rows are gathered, so every
        # process of a multi-process run returns the same whole batch.
        tokens_BR, logps_BR, lengths_B, stopped_B = (multihost.to_host(x)[:rows] for x in out)
        width = int(lengths_B.max())
        return Rollouts(
            token_ids_BR=np.ascontiguousarray(tokens_BR[:, :width]),
            logprobs_BR=np.ascontiguousarray(logps_BR[:, :width]),
            lengths_B=lengths_B.astype(np.int32),
            finish_reasons=tuple(FINISH_STOP if s else FINISH_LENGTH for s in stopped_B),
            weight_version=self.weight_version,
            prompt_index_B=np.repeat(np.arange(len(prompt_token_ids), dtype=np.int32), n),
        )
