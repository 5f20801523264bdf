"""Every fused_distill implementation equals the float64 SPEC transcription and each other.

Odd shapes on purpose: N not a multiple of the chunk, V = 300 with 128-wide vocabulary
tiles, masked padding rows, all tokens masked, a single routed token, the tail clamp
active. "Relative" below is normwise: max |a - b| <= tol * max |b| per array.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fused_distill_np import fd_directional, np_fused_distill

from srpo_jax.kernels.fused_distill import api, pallas_gpu, pallas_tpu, reference, xla

# "xla": recompute backward; "xla_forward": the gradient in the forward scan. Both take
# top-k, the vocabulary pass and (recompute) the backward over 128-column vocabulary tiles,
# so V = 300 ends in a shifted tile that overlaps the one before.
IMPLS = ("reference", "xla", "xla_forward", "pallas_gpu", "pallas_tpu")
N, D, V, TOPK, CHUNK, VOCAB_TILE = 37, 16, 300, 100, 16, 128


@functools.cache
def compiled(name, dtype, **loss_kwargs):
    """jit of (outputs, d numerator / d (student hidden, student unembedding)) for `name`.

    Chunks of 16 tokens and 128-wide vocabulary tiles (interpret-mode Pallas, recompute
    backward); cached so the cases that share shapes share one compile.
    """
    if name == "reference":
        fn = functools.partial(reference.fused_distill_reference, **loss_kwargs)
    else:
        grad_mode = "forward" if name == "xla_forward" else "recompute"
        stats = {
            "xla": xla.XlaVocabStats(block_v=128),
            "xla_forward": xla.XlaVocabStats(block_v=128),
            "pallas_gpu": pallas_gpu.GpuVocabStats(block_rows=8, block_v=128, interpret=True),
            "pallas_tpu": pallas_tpu.TpuVocabStats(block_rows=8, block_v=128, interpret=True),
        }[name]
        cfg = xla.ChunkedConfig(
            chunk_size=CHUNK,
            stats=stats,
            grad_mode=grad_mode,
            vocab_tile=VOCAB_TILE,
            dw_tile=VOCAB_TILE,
            topk_tile=VOCAB_TILE,
            **loss_kwargs,
        )
        fn = functools.partial(xla.chunked_fused_distill, cfg)

    def both(hs, ht, ws, wt, mask, tw):
        def numerator(hs, ws):
            out = fn(hs, ht, ws, wt, mask, tw)
            return out.numerator, out

        (_, out), grads = jax.value_and_grad(numerator, argnums=(0, 1), has_aux=True)(hs, ws)
        return out, grads

    return jax.jit(both)


def make_inputs(seed, mask_kind="padded", scale=1.0, n=N, v=V):
    rng = np.random.default_rng(seed)
    hs = rng.normal(size=(n, D)) * scale
    ht = rng.normal(size=(n, D)) * scale
    ws = rng.normal(size=(D, v)) * 0.5
    wt = ws + rng.normal(size=(D, v)) * 0.3  # a teacher near the student, as with EMA
    mask = {
        "padded": (np.arange(n) % 5 != 0) & (np.arange(n) < n - 4),
        "none": np.zeros(n, bool),
        "one": np.arange(n) == n // 2,
    }[mask_kind].astype(np.float32)
    tw = rng.uniform(0.5, 2.0, size=n)
    return [np.asarray(a, np.float32) for a in (hs, ht, ws, wt, mask, tw)]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run(name, inputs, dtype, **kw):
    """Outputs and (d numerator / d student hidden, d numerator / d student unembedding)."""
    cast = [jnp.asarray(a, dtype) for a in inputs[:4]] + [jnp.asarray(a) for a in inputs[4:]]
    return compiled(name, dtype, **kw)(*cast)


LOSS_CASES = [
    dict(alpha=0.5, add_tail=True, entropy_over="vocab", temperature=1.0, tau=1.0),
    dict(alpha=0.0, add_tail=True, entropy_over="vocab", temperature=0.7, tau=1.0),
    dict(alpha=1.0, add_tail=False, entropy_over="buckets", temperature=1.3, tau=2.0),
    dict(alpha=0.3, add_tail=False, entropy_over="vocab", temperature=1.0, tau=0.5),
]


# Every implementation on the default loss; the loss variants (alpha 0 / 1 / other, no tail,
# bucket entropy, temperature, tau) on the reference and both XLA gradient modes: the Pallas
# back-ends differ from "xla" only in the vocabulary pass, which the first case and the
# agreement tests below cover.
SPEC_CASES = [(impl, 0) for impl in IMPLS] + [
    (impl, case)
    for case in range(1, len(LOSS_CASES))
    for impl in ("reference", "xla", "xla_forward")
]


@pytest.mark.parametrize("impl,case", SPEC_CASES)
def test_fp32_matches_float64_spec(impl, case):
    kw = dict(topk=TOPK, **LOSS_CASES[case])
    inputs = make_inputs(case)
    out, (dh, dw) = run(impl, inputs, jnp.float32, **kw)
    num, z, div, ent = np_fused_distill(*inputs, **kw)
    assert rel_err(out.numerator, num) < 1e-5
    assert rel_err(out.z, z) < 1e-5
    assert rel_err(out.divergence_N, div) < 1e-5
    assert rel_err(out.entropy_N, ent) < 1e-5
    # Gradients: finite differences of the float64 spec along random directions.
    rng = np.random.default_rng(100 + case)
    hs, ht, ws, wt, mask, tw = inputs
    for grad, which in ((dh, 0), (dw, 2)):
        x = inputs[which]
        for _ in range(2):
            direction = rng.normal(size=x.shape)

            def f(xx, which=which):
                args = list(inputs)
                args[which] = xx
                return np_fused_distill(*args, **kw)[0]

            fd = fd_directional(f, x, direction)
            got = float(np.sum(np.asarray(grad, np.float64) * direction))
            scale = float(np.sum(np.abs(np.asarray(grad, np.float64) * direction)))
            assert abs(got - fd) <= 1e-5 * scale, (which, got, fd)


@pytest.mark.parametrize("mask_kind", ["padded", "none", "one"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_implementations_agree(mask_kind, dtype):
    kw = dict(topk=TOPK, alpha=0.5, add_tail=True, entropy_over="vocab", temperature=1.0, tau=1.0)
    inputs = make_inputs(7, mask_kind)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    base_out, base_grads = run("reference", inputs, dtype, **kw)
    # The float64 spec on the bf16-rounded inputs.
    rounded = [np.asarray(jnp.asarray(a, dtype), np.float64) for a in inputs[:4]] + inputs[4:]
    num, z, div, ent = np_fused_distill(*rounded, **kw)
    if mask_kind == "none":
        assert float(base_out.numerator) == 0.0 and float(base_out.z) == 0.0
    for impl in IMPLS:
        out, grads = run(impl, inputs, dtype, **kw)
        assert out.divergence_N.shape == (N,) and grads[0].dtype == dtype
        assert abs(float(out.numerator) - num) <= tol * abs(num) + 1e-30
        assert rel_err(out.divergence_N, div) < tol and rel_err(out.entropy_N, ent) < tol
        for g, g_ref in zip(grads, base_grads, strict=True):
            if mask_kind == "none":
                assert not np.any(np.asarray(g, np.float32)), impl
            else:
                assert rel_err(g, g_ref) < tol, impl
                assert np.all(np.isfinite(np.asarray(g, np.float32)))


def _check_every_impl(inputs, kw):
    """Every implementation's fp32 numerator and divergence equal the float64 SPEC reference,
    and its gradients the reference implementation's (1e-5 relative)."""
    num, _, div, _ = np_fused_distill(*inputs, **kw)
    _, ref_grads = run("reference", inputs, jnp.float32, **kw)
    for impl in IMPLS:
        out, grads = run(impl, inputs, jnp.float32, **kw)
        assert rel_err(out.numerator, num) < 1e-5 and rel_err(out.divergence_N, div) < 1e-5
        for g, g_ref in zip(grads, ref_grads, strict=True):
            assert rel_err(g, g_ref) < 1e-5, impl


def test_tail_clamp_active():
    """Outside-top-k logits 25 below the rest: the top-k hold > 1 - 1e-7 of the student
    mass, the tail sits on its floor and passes no gradient."""
    kw = dict(topk=TOPK, alpha=0.5, add_tail=True, entropy_over="vocab", temperature=1.0, tau=1.0)
    hs, ht, ws, wt, mask, tw = make_inputs(3)
    hs[:, 0] = 1.0
    ws[0, :TOPK], ws[0, TOPK:] = 0.0, -25.0
    inputs = [hs, ht, ws, wt, mask, tw]
    zs = hs.astype(np.float64) @ ws
    assert np.all(np.log(np.sum(np.exp(zs[:, TOPK:] - zs.max(1, keepdims=True)), 1)) < -16.2)
    _check_every_impl(inputs, kw)


def test_teacher_gets_no_gradient_and_api_dispatch():
    inputs = [jnp.asarray(a) for a in make_inputs(11)]

    def loss(hs, ht, ws, wt):
        options = api.FusedDistillOptions(topk=TOPK, chunk_size=CHUNK)
        return api.fused_distill(api.FusedDistillInputs(hs, ht, ws, wt, *inputs[4:]), options)

    assert api.resolve_implementation("auto") == "xla"  # CPU
    g_ht, g_wt = jax.grad(lambda *a: loss(*a).numerator, argnums=(1, 3))(*inputs[:4])
    assert not np.any(np.asarray(g_ht)) and not np.any(np.asarray(g_wt))
    ref = api.fused_distill(inputs, api.FusedDistillOptions(topk=TOPK, implementation="reference"))
    got = loss(*inputs[:4])
    assert rel_err(got.numerator, ref.numerator) < 1e-5
    with pytest.raises(ValueError, match="topk=400"):
        api.fused_distill(inputs, api.FusedDistillOptions(topk=400))
    with pytest.raises(ValueError, match="implementation='cuda'"):
        api.fused_distill(inputs, api.FusedDistillOptions(implementation="cuda"))
    with pytest.raises(ValueError, match="mask_N"):
        api.fused_distill(api.FusedDistillInputs(*inputs[:4], inputs[4][:-1]))


def test_tied_logit_left_out_of_topk():
    """Duplicated unembedding columns tie every logit with a twin; an odd k splits the pair
    at the threshold, so the chunked paths take SPEC's literal tail form on every row."""
    kw = dict(topk=99, alpha=0.5, add_tail=True, entropy_over="vocab", temperature=1.0, tau=1.0)
    hs, ht, ws, wt, mask, tw = make_inputs(5)
    ws = np.repeat(ws[:, : V // 2], 2, axis=1)
    inputs = [hs, ht, ws, wt, mask, tw]
    zs = np.asarray(jnp.asarray(hs) @ jnp.asarray(ws))
    assert np.all(zs[:, 0::2] == zs[:, 1::2]), "columns must tie exactly for this test"
    _check_every_impl(inputs, kw)


@pytest.mark.parametrize("v", [V, 307])
def test_bf16_recompute_without_cpu_views(v):
    """The recompute backward as other back-ends run it (bf16 W sliced directly, no integer
    views) gives the same gradients as with the XLA:CPU workaround. With the views, V = 300
    is cut into two tiles of 150 (the select write), prime V = 307 into 128-column tiles
    with a shifted last one (the gather write)."""
    kw = dict(topk=TOPK, alpha=0.5, add_tail=True, entropy_over="vocab", temperature=1.0, tau=1.0)
    inputs = make_inputs(7, v=v)
    cast = [jnp.asarray(a, jnp.bfloat16) for a in inputs[:4]] + [jnp.asarray(a) for a in inputs[4:]]
    grads = []
    for views in (True, False):
        cfg = xla.ChunkedConfig(
            chunk_size=CHUNK,
            stats=xla.XlaVocabStats(block_v=128),
            vocab_tile=VOCAB_TILE,
            dw_tile=VOCAB_TILE,
            topk_tile=VOCAB_TILE,
            narrow_views=views,
            **kw,
        )

        def numerator(hs, ws, cfg=cfg):
            return xla.chunked_fused_distill(cfg, hs, cast[1], ws, *cast[3:]).numerator

        grads.append(jax.jit(jax.grad(numerator, argnums=(0, 1)))(cast[0], cast[2]))
    ref = functools.partial(reference.fused_distill_reference, **kw)
    ref_grads = jax.grad(lambda hs, ws: ref(hs, cast[1], ws, *cast[3:]).numerator, argnums=(0, 1))(
        cast[0], cast[2]
    )
    for g_views, g_plain, g_ref in zip(*grads, ref_grads, strict=True):
        assert rel_err(g_plain, g_ref) < 1e-2 and rel_err(g_views, g_ref) < 1e-2
        assert rel_err(g_plain, g_views) < 1e-6
