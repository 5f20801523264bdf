"""The one entry point the learner calls: fused_distill (SPEC sections 5-6, DESIGN section 3).

Picks an implementation ("auto": the Triton kernel on GPU, the Mosaic kernel on TPU, the
chunked XLA path elsewhere and wherever the mesh splits the vocabulary over `tensor`),
validates arguments with errors that name the bad value, and
returns FusedDistillOutput(numerator, z, divergence_N, entropy_N).

Gradients: only `numerator` is differentiable, and only wrt the student hidden states and
the student unembedding. Teacher inputs, mask and token weights are stop-gradient (their
cotangents are zero); divergence_N and entropy_N are diagnostics. The learner forms
sum_t w_t l_t = |S| * numerator / z, accumulating numerator-gradients and z over
micro-batches (and psum over devices) before dividing once.

Sharding: under a mesh (jax.set_mesh) whose vocabulary is whole on each device, the call
goes through `fused_distill_sharded` itself (kernels/token_shards.py): each device runs its
own tokens via shard_map and the two scalars are psummed (the unembedding gradient by the
transpose). With the vocabulary split over `tensor` the SPMD partitioner runs the XLA path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from srpo_jax.kernels import options
from srpo_jax.kernels.fused_distill import pallas_gpu, pallas_tpu, xla
from srpo_jax.kernels.fused_distill.reference import FusedDistillOutput, fused_distill_reference
from srpo_jax.kernels.token_shards import token_shard_axes

IMPLEMENTATIONS = options.IMPLEMENTATIONS
GRAD_MODES = options.GRAD_MODES


def resolve_implementation(implementation: str) -> str:
    """Map "auto" to the back-end for the default device platform."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    # The platform of the mesh being traced under (jax.set_mesh), so a compile-only GPU/TPU
    # mesh picks its Pallas kernel from a CPU host (srpo_jax.aot.targets); else the default
    # back-end.
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "tpu": "pallas_tpu"}.get(platform, "xla")


class FusedDistillInputs(NamedTuple):
    """The kernel's arrays: student and teacher hidden states [N, D] at the scored tokens,
    their unembeddings [D, V], the token mask [N] and stop-gradient token weights [N]
    (None: all 1)."""

    student_hidden_ND: jax.Array
    teacher_hidden_ND: jax.Array
    student_unembed_DV: jax.Array
    teacher_unembed_DV: jax.Array
    mask_N: jax.Array
    token_weight_N: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class FusedDistillOptions:
    """The loss (SPEC 5-6: topk, alpha, tau, add_tail, entropy_over, temperature) and how it
    runs (chunk_size, implementation, grad_mode; interpret: Pallas in interpret mode)."""

    topk: int = 100
    alpha: float = 0.5
    tau: float = 1.0
    add_tail: bool = True
    entropy_over: str = "vocab"
    temperature: float = 1.0
    chunk_size: int = 1024
    implementation: str = "auto"
    grad_mode: str = "auto"
    interpret: bool = False

    def loss_kwargs(self) -> dict:
        """The loss's own options, as the reference and the chunked paths take them."""
        return dict(
            topk=self.topk,
            alpha=float(self.alpha),
            tau=float(self.tau),
            add_tail=bool(self.add_tail),
            entropy_over=self.entropy_over,
            temperature=float(self.temperature),
        )


def _validate(x: FusedDistillInputs, o: FusedDistillOptions):
    hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N = x
    if hs_ND.ndim != 2 or ht_ND.shape != hs_ND.shape:
        raise ValueError(
            f"student_hidden_ND {hs_ND.shape} and teacher_hidden_ND {ht_ND.shape} must be "
            "equal [N, D]"
        )
    n_tokens, d_model = hs_ND.shape
    if ws_DV.ndim != 2 or ws_DV.shape[0] != d_model or wt_DV.shape != ws_DV.shape:
        raise ValueError(
            f"student_unembed_DV {ws_DV.shape} and teacher_unembed_DV {wt_DV.shape} must be "
            f"equal [D={d_model}, V]"
        )
    if mask_N.shape != (n_tokens,):
        raise ValueError(f"mask_N has shape {mask_N.shape}; expected ({n_tokens},)")
    if tw_N is not None and tw_N.shape != (n_tokens,):
        raise ValueError(f"token_weight_N has shape {tw_N.shape}; expected ({n_tokens},)")
    if not 1 <= o.topk <= ws_DV.shape[1]:
        raise ValueError(f"topk={o.topk} must lie in [1, V={ws_DV.shape[1]}]")
    if not 0.0 <= o.alpha <= 1.0:
        raise ValueError(f"alpha={o.alpha} must lie in [0, 1]")
    if o.tau <= 0.0 or o.temperature <= 0.0:
        raise ValueError(f"tau={o.tau} and temperature={o.temperature} must be positive")
    if o.entropy_over not in ("vocab", "buckets"):
        raise ValueError(f"entropy_over={o.entropy_over!r}; expected 'vocab' or 'buckets'")


def _resolve_grad_mode(grad_mode: str, chunk_size: int, student_unembed_DV) -> str:
    """Checks chunk_size and grad_mode; "auto" -> "forward" for an fp32 unembedding (its
    accumulator is then the gradient itself), "recompute" for narrower ones."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be positive")
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={grad_mode!r}; expected one of {GRAD_MODES}")
    if grad_mode == "auto":
        wide = jnp.dtype(student_unembed_DV.dtype).itemsize >= 4
        grad_mode = "forward" if wide else "recompute"
    return grad_mode


def fused_distill(
    inputs: FusedDistillInputs, options: FusedDistillOptions = FusedDistillOptions()
) -> FusedDistillOutput:
    """SDPO distillation numerator and entropy-weight normaliser (see module docstring).

    options.grad_mode (chunked implementations): "forward" contracts the gradient inside
    the forward scan (4 N D V matmuls, as autodiff of the reference), accumulating
    d(unembedding) in fp32 in place; "recompute" keeps O(N k) coefficients in the forward
    and re-forms the logit gradient per vocabulary tile in the backward (5 N D V matmuls),
    writing d(unembedding) tiles straight into the result. "auto" takes "forward" for an
    fp32 unembedding (its accumulator is then the gradient itself, no extra memory) and
    "recompute" for narrower ones (where "forward" would add an fp32 [D, V] temporary).
    See xla.py / xla_bwd.py.
    """
    inputs = FusedDistillInputs(*inputs)
    _validate(inputs, options)
    n_tokens = inputs.student_hidden_ND.shape[0]
    grad_mode = _resolve_grad_mode(options.grad_mode, options.chunk_size, inputs[2])
    impl = _implementation_for_mesh(options.implementation, n_tokens)
    options = dataclasses.replace(options, implementation=impl, grad_mode=grad_mode)
    mesh, axes = token_shard_axes(n_tokens) if impl != "reference" else (None, ())
    if axes:
        # Pallas calls have no SPMD partitioning rule (Mosaic refuses; Triton would gather
        # every operand), and the partitioner runs the XLA path's token loop whole on every
        # device (kernels/token_shards.py): each device runs its own tokens and psums.
        return fused_distill_sharded(mesh, inputs, options, token_axes=axes)
    if inputs.token_weight_N is None:
        inputs = inputs._replace(token_weight_N=jnp.ones(inputs.mask_N.shape, jnp.float32))
    if impl == "reference":
        return fused_distill_reference(*inputs, **options.loss_kwargs())
    stats = {
        "xla": xla.xla_vocab_stats,
        "pallas_gpu": pallas_gpu.GpuVocabStats(interpret=options.interpret),
        "pallas_tpu": pallas_tpu.TpuVocabStats(interpret=options.interpret),
    }[impl]
    cfg = xla.ChunkedConfig(
        chunk_size=options.chunk_size, stats=stats, grad_mode=grad_mode, **options.loss_kwargs()
    )
    return xla.chunked_fused_distill(cfg, *inputs)


def _implementation_for_mesh(implementation: str, n_tokens: int) -> str:
    """resolve_implementation, then the XLA path where a Pallas call cannot run under the
    current mesh (an explicit Pallas choice there is an error)."""
    impl = resolve_implementation(implementation)
    if impl in ("pallas_gpu", "pallas_tpu") and not _pallas_fits_mesh(n_tokens):
        if implementation != "auto":
            raise ValueError(
                f"implementation={implementation!r} cannot run under the current mesh "
                f"{dict(jax.sharding.get_abstract_mesh().shape)}: a Pallas call needs the whole "
                "vocabulary on each device (mesh axes other than data and fsdp of size 1) and "
                "the tokens splitting evenly over data x fsdp; use implementation='xla'"
            )
        # The vocabulary is split over `tensor` (or the tokens do not split): the SPMD
        # partitioner runs the chunked XLA path on the shards; a Pallas call cannot be
        # partitioned (Mosaic refuses, Triton would gather every operand).
        impl = "xla"
    return impl


def _pallas_fits_mesh(n_tokens: int) -> bool:
    """Whether a Pallas call can run under the mesh being traced: no mesh, inside shard_map,
    every axis of size 1, or the tokens splitting over data x fsdp (token_shard_axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or jax.sharding.AxisType.Manual in mesh.axis_types:
        return True
    return bool(token_shard_axes(n_tokens)[1]) or all(mesh.shape[a] == 1 for a in mesh.axis_names)


def fused_distill_sharded(
    mesh: jax.sharding.Mesh,
    inputs: FusedDistillInputs,
    options: FusedDistillOptions = FusedDistillOptions(),
    *,
    token_axes: tuple[str, ...] = ("data", "fsdp"),
) -> FusedDistillOutput:
    """fused_distill with tokens split over `token_axes` of `mesh`, scalars psummed.

    N must divide by the product of the token axes' sizes (pad with masked rows). The
    unembeddings enter replicated (gathered once, as FSDP does for any weight use).
    """
    inputs = FusedDistillInputs(*inputs)
    n_shards = 1
    for axis in token_axes:
        n_shards *= mesh.shape[axis]
    if inputs.student_hidden_ND.shape[0] % n_shards:
        raise ValueError(
            f"N={inputs.student_hidden_ND.shape[0]} tokens do not split over {n_shards} "
            f"shards of mesh axes {token_axes}; pad with masked rows"
        )
    if inputs.token_weight_N is None:
        inputs = inputs._replace(token_weight_N=jnp.ones(inputs.mask_N.shape, jnp.float32))
    tok = P(token_axes)

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(FusedDistillInputs(tok, tok, P(), P(), tok, tok),),
        out_specs=FusedDistillOutput(P(), P(), tok, tok),
        # Pallas out_shapes carry no varying-axes type; shard_map's transpose then sums the
        # replicated unembedding's cotangent over the token shards itself.
        check_vma=False,
    )
    def local(x):
        out = fused_distill(x, options)
        return out._replace(
            numerator=jax.lax.psum(out.numerator, token_axes),
            z=jax.lax.psum(out.z, token_axes),
        )

    return local(inputs)
