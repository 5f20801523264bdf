"""The memory plan at a length mix: `python -m srpo_jax.plan --lengths=worst|paper|FILE`.

    python -m srpo_jax.plan --lengths=paper --compile=both --micro_batch_tokens=98304,196608

The mix (aot/length_mix.py) becomes one step's rows, and the trainer's own batch builders
(trainer/step.py: padded_batch, packed_batch) lay them out: padded (config's
micro_batch_rows, or each --micro_batch_rows) and packed (train.pack_len as the trainer
resolves it, the config's train.micro_batch_tokens or each --micro_batch_tokens). The plan
prints each layout's micro-batches, token slots per micro-batch and padding fraction, then
compiles the layouts --compile names with the real batch shapes (aot/plan.py
compile_batch) and reports the largest micro-batch that fits with >= 10% headroom.

Packed on GPU: the pinned jax has no packed cuDNN layout (docs/architecture.md), so where
the model's attention resolves to cuDNN the packed step is compiled on the XLA attention
path (model.attention_impl=xla, as a packed GPU run must set) and the plan says so.
"""

from __future__ import annotations

import dataclasses
import json

import jax

from srpo_jax import config as config_lib
from srpo_jax.aot import figures, length_mix
from srpo_jax.aot import targets as aot
from srpo_jax.aot.topologies import GiB
from srpo_jax.model import attention
from srpo_jax.trainer import step as step_lib

HEADROOM = 10.0  # % of usable memory the verdict asks for (docs/scale.md)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One layout of the mix's step: the run config it implies and its built batch."""

    kind: str  # "padded" | "packed"
    setting: int  # micro_batch_rows (padded) or micro_batch_tokens (packed; 0 = one)
    cfg: config_lib.Config
    layout: length_mix.Layout
    batch: object

    @property
    def label(self) -> str:
        unit = "rows" if self.kind == "padded" else "tokens"
        return f"{self.kind} {self.setting or 'all'} {unit}"


def _ints(text: str, name: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise config_lib.ConfigError(f"--{name} must be a comma list of integers, got {text!r}")
    return [int(p) for p in parts]


def variants(cfg, mix: length_mix.LengthMix, micro_rows: str, micro_tokens: str):
    """Every padded and packed layout asked for, built from the mix's rows."""
    rows = mix.step_rows()
    out = []
    mini_rows = cfg.train.mini_batch_prompts * cfg.algo.group_size
    for m in _ints(micro_rows, "micro_batch_rows") if micro_rows else [cfg.train.micro_batch_rows]:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_rows=m))
        batch = step_lib.padded_batch(c, rows, 0)
        out.append(
            Variant("padded", m or mini_rows, c, length_mix.layout_of("padded", batch, rows), batch)
        )
    budgets = _ints(micro_tokens, "micro_batch_tokens") if micro_tokens else []
    for b in budgets or [cfg.train.micro_batch_tokens]:
        t = dataclasses.replace(
            cfg.train,
            packed=True,
            pack_len=cfg.train.pack_len or config_lib.pack_len_of(cfg),
            micro_batch_tokens=b,
        )
        c = dataclasses.replace(cfg, train=t)
        batch = step_lib.packed_batch(c, rows, 0)
        out.append(Variant("packed", b, c, length_mix.layout_of("packed", batch, rows), batch))
    return out


def _model_for(kind: str, model_cfg, mesh):
    """The model config the step compiles with: packed on a cuDNN target takes XLA."""
    platform = mesh.devices.flat[0].platform
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if kind == "packed" and attention.resolve(model_cfg.attention_impl, platform) == "cudnn":
        return model_cfg.replace(attention_impl="xla"), True
    return model_cfg, False


HEADER = (
    "layout                 micro  tokens/micro  params teacher     opt   batch    temp    code"
    "    peak  verdict"
)


def _row(v: Variant, f: figures.Figures, usable: int) -> str:
    fits, head = figures.verdict(f.peak, usable)
    word = f"fits, {head:.1f}% headroom" if fits else f"DOES NOT FIT ({-head:.1f}% over)"
    cols = (f.params, f.teacher, f.opt, f.batch, f.temp, f.code, f.peak)
    return (
        f"{v.label:<22} {v.layout.micro_batches:>5} {v.layout.tokens:>13} "
        + " ".join(figures.fmt_gib(c) for c in cols)
        + f"  {word}"
    )


def _compile(v: Variant, model_cfg, mesh, compiler):
    """(Figures, None) or (None, the compiler's refusal)."""
    try:
        return figures.compile_batch(v.cfg, model_cfg, mesh, v.batch, compiler), None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e).strip().splitlines()[0]


def show_layouts(f, cfg, mix) -> list[Variant]:
    """Prints the mix and its layouts (one line each); returns them."""
    try:
        vs = variants(cfg, mix, f.micro_batch_rows, f.micro_batch_tokens)
    except (config_lib.ConfigError, ValueError) as e:
        aot.fail(str(e))
    print(mix.describe())
    print(length_mix.table([v.layout for v in vs], [v.label for v in vs]), flush=True)
    return vs


def compile_variants(f, cfg, model_cfg, mesh, compiler: str, topo, vs) -> None:
    """Compiles the layouts --compile names and prints their figures and verdicts."""
    which = f.compile if f.compile != "config" else ("packed" if cfg.train.packed else "padded")
    if which == "none":
        return
    kinds = ("padded", "packed") if which == "both" else (which,)
    usable, results = topo.usable_bytes, []
    print("per-device GiB:\n" + HEADER, flush=True)
    for v in [v for v in vs if v.kind in kinds]:
        mcfg, switched = _model_for(v.kind, model_cfg, mesh)
        if switched:
            print(f"{v.label}: attention on the XLA path (no packed cuDNN layout in this jax)")
        fig, refused = _compile(v, mcfg, mesh, compiler)
        if fig is None:
            print(f"{v.label:<22} DOES NOT FIT, compiler: {refused}", flush=True)
        else:  # the FLOPs at once: a long series of compiles reports as it goes
            print(_row(v, fig, usable), flush=True)
            print(f"  {fig.flops:.3e} FLOPs per device ({fig.flops_source}, {fig.compiler})")
        results.append((v, fig, refused))
    _report(f, topo, results, usable)


def _report(f, topo, results, usable: int) -> None:
    """The largest layout of each kind with the headroom asked, and --json."""
    for kind in ("padded", "packed"):
        ok = [
            (v, fig)
            for v, fig, _ in results
            if v.kind == kind
            and fig is not None
            and figures.verdict(fig.peak, usable)[1] >= HEADROOM
        ]
        if ok:
            v, fig = max(ok, key=lambda x: x[0].layout.tokens)
            print(
                f"VERDICT {kind}: largest with >= {HEADROOM:.0f}% headroom: {v.label} "
                f"({v.layout.tokens} tokens per micro-batch, peak {fig.peak / GiB:.2f} "
                f"GiB per device, {figures.verdict(fig.peak, usable)[1]:.1f}% headroom)"
            )
        elif any(v.kind == kind for v, _, _ in results):
            print(f"VERDICT {kind}: none of those compiled fits with >= {HEADROOM:.0f}% headroom")
    if f.json:
        out = {
            "topology": topo.name,
            "usable_bytes": usable,
            "results": [
                dict(
                    layout=v.label,
                    **dataclasses.asdict(v.layout),
                    tokens=v.layout.tokens,
                    figures=None if fig is None else dict(dataclasses.asdict(fig), peak=fig.peak),
                    refused=refused,
                )
                for v, fig, refused in results
            ],
        }
        with open(f.json, "w") as fh:
            json.dump(out, fh, indent=2)
