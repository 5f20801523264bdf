"""Memory plan: will the full SRPO train step fit a given accelerator topology?

    python -m srpo_jax.aot.plan --config=configs/qwen3_8b_chem.py:method=srpo --topology=h20x8

builds the train state and one step's batch as abstract shapes only (ShapeDtypeStructs
carrying their shardings; no weight is ever allocated), lowers and compiles the whole
`learner.train_step_fn` (student forward/backward with the config's remat, routed teacher
forward, fused SDPO loss, AdamW, EMA) for the topology's device count, and reads the
per-device figures of `compiled.memory_analysis()`. The compiled program is the one
device's SPMD partition, so its sizes are per device. Arguments are split into params,
EMA teacher, optimizer state and batch by summing the per-device shard sizes of their
known shapes. Peak = arguments + outputs - donated aliases + temporaries + code.

The batch is SPEC section 10 in its worst case: 32 prompts x 8 rollouts, prompts bucketed
to 2048 tokens, responses to 8192, and every row of every micro-batch routed to the
teacher (M = micro_batch_rows teacher rows of --teacher_prompt_len tokens).

With no accelerator attached the compile runs on the CPU backend with N forced host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set here before jax is
imported when run as a script). The CPU figures are an estimate of the GPU/TPU ones, not
equal to them: the CPU backend fuses less, keeps bf16 dots in fp32 temporaries and lays
out buffers differently (docs/scale.md). On the real machine run the same command with
--native: the devices are then the real ones and the figures are the target compiler's.

The layer stack is a lax.scan, so compiling all layers costs no more than compiling two;
nothing is extrapolated unless --layers is given (then params/teacher/optimizer are
computed exactly for the full depth and the temporaries are fitted linearly in the layer
count from two compiles, as printed).
"""

from __future__ import annotations

import os
import sys

from srpo_jax import jax_startup
from srpo_jax.aot import topologies


def _force_host_devices(argv: list[str]) -> None:
    """Sets the forced CPU device count from --topology/--num_devices before jax loads."""
    if any(a == "--native" or a.startswith("--native=t") for a in argv):
        return
    n = None
    for a in argv:
        if a.startswith("--num_devices="):
            n = int(a.split("=", 1)[1])
        elif a.startswith("--topology=") and n is None:
            try:
                n = topologies.get(a.split("=", 1)[1]).num_devices
            except ValueError as e:  # before jax and absl: the one error line by hand
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
    if n is None:
        n = topologies.get("h20x8").num_devices
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "force_host_platform_device_count" not in f)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    # Before the imports below load jax: the forced CPU device count, then a quiet import.
    _force_host_devices(sys.argv)
    jax_startup.import_jax()

import dataclasses  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402

from srpo_jax.aot import chips  # noqa: E402
from srpo_jax.aot import targets as aot  # noqa: E402
from srpo_jax.aot.figures import (  # noqa: E402, F401 - the plan's names, in one place
    Figures,
    compile_batch,
    fmt_gib,
    per_device_bytes,
    verdict,
)
from srpo_jax.config import Config  # noqa: E402
from srpo_jax.learner import train_step as learner  # noqa: E402
from srpo_jax.learner.batch import TrainBatch  # noqa: E402
from srpo_jax.sharding import MeshConfig, make_mesh  # noqa: E402

GiB = topologies.GiB


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The batch of one training step (SPEC 10), as the trainer would bucket it."""

    prompts: int = 32
    group_size: int = 8
    mini_batch_prompts: int = 32
    micro_batch_rows: int = 8
    prompt_len: int = 2048
    response_len: int = 8192
    teacher_prompt_len: int = 2048
    teacher_rows: int = -1  # -1 = micro_batch_rows (every row routed: the worst case)

    @property
    def n_mini(self) -> int:
        return self.prompts // self.mini_batch_prompts

    @property
    def n_micro(self) -> int:
        return self.mini_batch_prompts * self.group_size // self.micro_batch_rows

    @property
    def m_rows(self) -> int:
        return self.micro_batch_rows if self.teacher_rows < 0 else self.teacher_rows


def batch_struct(s: StepShape) -> TrainBatch:
    """Shapes/dtypes of batching.build_train_batch's output for this step shape."""
    return TrainBatch.abstract(
        n_mini=s.n_mini,
        n_micro=s.n_micro,
        rows=s.micro_batch_rows,
        prompt_len=s.prompt_len,
        response_len=s.response_len,
        teacher_rows=s.m_rows,
        teacher_prompt_len=s.teacher_prompt_len,
    )


def step_program_settings(cfg: Config):
    """(model config, learner config) of the train step main would run with `cfg`: the same
    resolution (hf_path's config.json included) and the trainer's own step settings."""
    return cfg.model.architecture(), learner.StepSettings.from_config(cfg)


def compile_step(
    cfg: Config, model_cfg, mesh, shape: StepShape, compiler: str = "XLA:CPU"
) -> Figures:
    """Lowers and compiles the train step for abstract inputs on `mesh` (forced CPU devices
    or aot.target_mesh's compile-only ones, compiled by `compiler`); returns its figures."""
    return compile_batch(cfg, model_cfg, mesh, batch_struct(shape), compiler)


def extrapolated(cfg: Config, model_cfg, mesh, shape: StepShape, layers, compiler="XLA:CPU"):
    """Figures for the full depth from compiles at two smaller depths (see module doc).

    Parameter, teacher, optimizer and batch bytes are exact (computed from the full-depth
    abstract state); temporaries and outputs are fitted linearly in the layer count.
    """
    (la, lb), full = layers, model_cfg.num_layers
    fa = compile_step(cfg, model_cfg.replace(num_layers=la), mesh, shape, compiler)
    fb = compile_step(cfg, model_cfg.replace(num_layers=lb), mesh, shape, compiler)
    _, state = learner.abstract_state(model_cfg, learner.StepSettings.from_config(cfg), mesh)
    if fb.temp < fa.temp:
        # XLA:GPU can schedule a deeper program into fewer temporaries; a line through two
        # such points goes negative at full depth, so there is no fit to report.
        from srpo_jax.cli import fail

        fail(
            f"--layers={la},{lb}: temporaries fall with depth ({fa.temp / GiB:.2f} GiB at {la} "
            f"layers, {fb.temp / GiB:.2f} GiB at {lb}) under {compiler}, so a linear fit is "
            "meaningless; drop --layers to compile the full depth"
        )

    def line(a, b):
        return int(round(a + (b - a) * (full - la) / (lb - la)))

    exact = dict(
        params=per_device_bytes(state.params),
        teacher=per_device_bytes(state.teacher),
        opt=per_device_bytes(state.opt_state),
        batch=fa.batch,
    )
    state_bytes = exact["params"] + exact["teacher"] + exact["opt"]
    state_a = fa.params + fa.teacher + fa.opt
    return Figures(
        **exact,
        arguments=state_bytes + fa.arguments - state_a,
        outputs=state_bytes + fa.outputs - state_a,
        aliased=state_bytes + fa.aliased - state_a,
        temp=line(fa.temp, fb.temp),
        code=max(fa.code, fb.code),
        compiler=fa.compiler,
        flops=float(line(fa.flops, fb.flops)),
        flops_source=f"{fa.flops_source}, fitted linearly in the layer count",
    ), (fa, fb)


def micro_candidates(mini_rows: int, batch_shards: int) -> list[int]:
    """Valid micro_batch_rows: divisors of the mini-batch rows that the batch axes divide."""
    return [d for d in range(1, mini_rows + 1) if mini_rows % d == 0 and d % batch_shards == 0]


def parse_mesh(text: str) -> MeshConfig:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--mesh must be data,fsdp,tensor (three integers), got {text!r}")
    data, fsdp, tensor = (int(p) for p in parts)
    return MeshConfig(data=data, fsdp=fsdp, tensor=tensor)


def default_mesh(config_mesh: MeshConfig, n_dev: int) -> MeshConfig:
    """The mesh the launch scripts would use on n_dev devices: the config's (one-node)
    layout, replicated over `data` when n_dev is a multiple of it (multi-node); otherwise
    tensor over gcd(n_dev, 8) devices and data over the rest (e.g. a 4-chip TPU slice)."""
    if n_dev % config_mesh.size == 0:
        return dataclasses.replace(config_mesh, data=config_mesh.data * n_dev // config_mesh.size)
    tensor = math.gcd(n_dev, 8)
    return MeshConfig(data=n_dev // tensor, tensor=tensor)


HEADER = "micro_rows n_micro  params teacher     opt   batch    temp    code    peak  verdict"


def row(micro: int, n_micro: int, f: Figures, usable: int) -> str:
    fits, head = verdict(f.peak, usable)
    word = f"fits, {head:.1f}% headroom" if fits else f"DOES NOT FIT ({-head:.1f}% over)"
    cols = (f.params, f.teacher, f.opt, f.batch, f.temp, f.code, f.peak)
    return f"{micro:>10} {n_micro:>7} " + " ".join(fmt_gib(c) for c in cols) + f"  {word}"


def search(
    cfg, model_cfg, mesh, base: StepShape, usable: int, *, tried, max_compiles, layers, compiler
):
    """Compiles micro_batch_rows candidates around the config's value; returns
    ({micro_rows: Figures}, {micro_rows: the compiler's refusal}). Goes up while the step
    fits, down while it does not."""
    mini_rows = base.mini_batch_prompts * base.group_size
    cands = micro_candidates(mini_rows, mesh.shape["data"] * mesh.shape["fsdp"])
    if not cands:
        raise ValueError(
            f"no micro_batch_rows divides the mini-batch of {mini_rows} rows and is a multiple "
            f"of data*fsdp = {mesh.shape['data'] * mesh.shape['fsdp']}: choose another --mesh"
        )
    results: dict[int, Figures] = {}
    refused: dict[int, str] = {}

    def run(m):
        shape = dataclasses.replace(base, micro_batch_rows=m)
        try:
            if layers:
                fig, _ = extrapolated(cfg, model_cfg, mesh, shape, layers, compiler)
            else:
                fig = compile_step(cfg, model_cfg, mesh, shape, compiler)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            # XLA:TPU refuses to compile a program whose temporaries exceed the chip's HBM:
            # no buffer assignment to read, but the verdict is known.
            refused[m] = str(e).strip().splitlines()[0]
            print(f"{m:>10} {shape.n_micro:>7}  DOES NOT FIT, compiler: {refused[m]}", flush=True)
            return False
        results[m] = fig
        print(row(m, shape.n_micro, fig, usable), flush=True)
        return fig.peak <= usable

    if tried:
        for m in tried:
            run(m)
        return results, refused
    start = base.micro_batch_rows if base.micro_batch_rows in cands else cands[0]
    i = cands.index(start)
    step = 1 if run(start) else -1
    i += step
    while 0 <= i < len(cands) and len(results) < max_compiles:
        fits = run(cands[i])
        if (step == 1 and not fits) or (step == -1 and fits):
            break
        i += step
    return results, refused


def _print_header(cfg, model_cfg, topo, mesh_cfg, base: StepShape, tp_len, layers, backend):
    """What is planned: the model, the target, the mesh and the step's worst-case shape
    (or, at another length mix, its limits: the mix and its layouts follow)."""
    from absl import flags

    worst = flags.FLAGS.lengths == "worst"
    usable = topo.usable_bytes
    mini_rows = base.mini_batch_prompts * base.group_size
    t = cfg.train
    print(
        f"SRPO train-step memory plan: {cfg.model.preset or cfg.model.hf_path} "
        f"({model_cfg.num_layers} layers, remat={model_cfg.remat}), method {cfg.algo.method}\n"
        f"topology {topo.name}: {topo.description}; {topo.num_devices} devices x "
        f"{topo.device_bytes / GiB:.1f} GiB, usable {usable / GiB:.1f} GiB "
        f"({topo.usable_fraction:.0%})\n"
        f"mesh data={mesh_cfg.data} fsdp={mesh_cfg.fsdp} tensor={mesh_cfg.tensor}; step "
        f"{base.prompts} prompts x {base.group_size} rollouts, {base.n_mini} update(s) of "
        f"{mini_rows} rows; P={base.prompt_len} R={base.response_len} teacher Pt={tp_len}, "
        + (
            "teacher rows per micro-batch = micro_batch_rows (all routed: worst case); "
            if worst
            else "lengths and routing from the length mix below; "
        )
        + f"fused loss chunk {t.chunk_size} tokens\n"
        f"figures: {backend}"
    )
    if layers:
        print(
            f"EXTRAPOLATED: compiled with {layers[0]} and {layers[1]} layers; params/teacher/"
            f"optimizer exact for {model_cfg.num_layers} layers, temporaries fitted linearly"
        )


def _config_and_mix(f):
    """The run config (shapes only) and the --lengths mix, or one error line."""
    from srpo_jax import config as config_lib
    from srpo_jax.aot import length_mix
    from srpo_jax.cli import last_error_line

    try:  # a config file that failed to load raises on first use
        c = f.config if f.config is not None else _default_config()
        c.model.random_init = True  # shapes only: the weights are never loaded or initialised
        cfg = config_lib.from_config_dict(c)
    except (config_lib.ConfigError, OSError) as e:
        aot.fail(last_error_line(str(e)))
    try:  # before any compiler starts: a bad mix is a one-line error at once
        return cfg, length_mix.resolve(cfg, f.lengths)
    except length_mix.MixError as e:
        aot.fail(str(e))


def _base_shape(f, cfg) -> tuple[StepShape, int]:
    """The worst-case step shape of the config and its teacher prompt bucket."""
    from srpo_jax.data import buckets

    t = cfg.train
    mini_rows = t.mini_batch_prompts * cfg.algo.group_size
    prompt_len, response_len, worst_tp_len = buckets.worst_case_lengths(cfg)
    tp_len = f.teacher_prompt_len or worst_tp_len
    shape = StepShape(
        prompts=t.prompts_per_step,
        group_size=cfg.algo.group_size,
        mini_batch_prompts=t.mini_batch_prompts,
        micro_batch_rows=t.micro_batch_rows or mini_rows,
        prompt_len=prompt_len,
        response_len=response_len,
        teacher_prompt_len=tp_len,
    )
    return shape, tp_len


def main(argv: list[str]) -> None:
    from absl import flags

    from srpo_jax import log_levels
    from srpo_jax.aot import mix_plan

    f = flags.FLAGS
    log_levels.apply(f.verbosity)  # library INFO (jax's backend probing) off unless asked
    if len(argv) > 1:
        aot.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if f.list:
        print(topologies.table())
        return
    cfg, mix = _config_and_mix(f)
    topo = topologies.get(f.topology)
    if f.native and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    n_dev = jax_startup.device_count()
    expected = f.num_devices or topo.num_devices
    if n_dev != expected:
        raise SystemExit(
            f"{n_dev} JAX devices but topology {topo.name} needs {expected}: run as "
            "`python -m srpo_jax.aot.plan` (which forces the CPU device count) or pass --native "
            "on the real machine"
        )
    model_cfg, _ = step_program_settings(cfg)
    mesh_cfg = parse_mesh(f.mesh) if f.mesh else default_mesh(cfg.mesh, n_dev)
    mesh, compiler, backend = _target(f, topo, mesh_cfg, n_dev)
    base, tp_len = _base_shape(f, cfg)
    layers = tuple(int(x) for x in f.layers.split(",")) if f.layers else ()
    _print_header(cfg, model_cfg, topo, mesh_cfg, base, tp_len, layers, backend)
    variants = mix_plan.show_layouts(f, cfg, mix)
    if f.lengths != "worst" or cfg.train.packed or f.micro_batch_tokens or f.compile != "config":
        mix_plan.compile_variants(f, cfg, model_cfg, mesh, compiler, topo, variants)
        return
    print("per-device GiB:\n" + HEADER, flush=True)
    tried = [int(x) for x in f.micro_batch_rows.split(",")] if f.micro_batch_rows else []
    results, refused = search(
        cfg, model_cfg, mesh, base, topo.usable_bytes, tried=tried, max_compiles=f.max_compiles,
        layers=layers, compiler=compiler,
    )  # fmt: skip
    _report(f, topo, mesh_cfg, topo.usable_bytes, layers, results, refused, compiler)


DEFAULT_CONFIG = ("qwen3_8b_chem.py", "method=srpo")


def _default_config():
    """Without --config: Qwen3-8B SRPO (configs/qwen3_8b_chem.py:method=srpo of this checkout)."""
    import pathlib

    from srpo_jax.config import load_config_module

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / DEFAULT_CONFIG[0]
    if not path.is_file():
        raise SystemExit(
            f"no --config given and the default {path} is not there (an installed, not a "
            "source, copy): pass --config=configs/qwen3_8b_chem.py:method=srpo"
        )
    print(f"config: {path.name}:{DEFAULT_CONFIG[1]} (the default; --config picks another)")
    return load_config_module(str(path), path.name).get_config(DEFAULT_CONFIG[1])


def _target(f, topo, mesh_cfg: MeshConfig, n_dev: int):
    """(mesh, compiler name, label): the target's own compiler on compile-only devices
    (srpo_jax.aot.targets) unless --backend=cpu or --native; an absent [aot] extra is an error
    only when --backend=target asks for it, else the plan falls back to the CPU estimate."""
    if f.native:
        kind = jax.devices()[0].device_kind
        return make_mesh(mesh_cfg), f"native {jax.default_backend()}", f"native ({kind})"
    if f.backend != "cpu":
        try:
            aot.require_extra(topo.platform)
            mesh = aot.target_mesh(topo.name, mesh_cfg)
        except aot.AotUnavailable as e:
            if f.backend == "target":
                aot.fail(str(e))
        else:
            name = aot.compiler_name(topo.name)
            return mesh, name, f"{name} compile-only for {topo.name} (no device needed)"
    label = (
        f"XLA:CPU, {n_dev} forced host devices: an ESTIMATE of the {topo.platform.upper()} "
        "figures (docs/scale.md; pip install -e '.[aot]' for the target's compiler)"
    )
    return make_mesh(mesh_cfg), "XLA:CPU", label


def _report(f, topo, mesh_cfg, usable: int, layers, results: dict, refused, compiler) -> None:
    """The verdict line (largest micro-batch that fits) and, with --json, the figures."""
    chip = chips.CHIPS.get(topo.chip)
    for m, fig in sorted(results.items()):
        line = (
            f"micro_rows {m}: {fig.flops:.3e} FLOPs per device ({fig.flops_source}, {fig.compiler})"
        )
        if chip is not None:
            r = aot.roofline(topo.name, fig.flops, fig.arguments + fig.outputs)
            line += (
                f"; lower bounds: {r.compute_s:.2f} s at peak bf16 "
                f"({chip.peak_bf16_flops / 1e12:.0f} TFLOP/s), {r.memory_s * 1e3:.1f} ms for "
                f"HBM (arguments read + outputs written once at "
                f"{chip.hbm_bytes_per_s / 1e12:.1f} TB/s)"
            )
        print(line)
    fitting = [m for m, fig in results.items() if fig.peak <= usable]
    if fitting:
        best = max(fitting)
        fits, head = verdict(results[best].peak, usable)
        print(
            f"VERDICT: fits. Largest micro_batch_rows that fits: {best} "
            f"(peak {results[best].peak / GiB:.2f} GiB per device, {head:.1f}% headroom)"
        )
    else:
        print(
            f"VERDICT: does NOT fit with any micro_batch_rows tried "
            f"({sorted({*results, *refused})}); try "
            "another mesh (--mesh=data,fsdp,tensor; tensor splits the attention heads), more "
            "devices, or a shorter teacher bucket (--teacher_prompt_len)"
        )
    if f.json:
        import json

        out = {
            "topology": topo.name,
            "mesh": dataclasses.asdict(mesh_cfg),
            "usable_bytes": usable,
            "native": bool(f.native),
            "compiler": compiler,
            "extrapolated_from_layers": list(layers),
            "results": {
                str(m): dict(dataclasses.asdict(fig), peak=fig.peak) for m, fig in results.items()
            },
            "refused": {str(m): msg for m, msg in refused.items()},
        }
        with open(f.json, "w") as fh:
            json.dump(out, fh, indent=2)


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file (path[:arg]); default configs/qwen3_8b_chem.py:method=srpo."
    )
    flags.DEFINE_string("topology", "h20x8", "Target; --list shows the table.")
    flags.DEFINE_bool("list", False, "Print the topology table and exit.")
    flags.DEFINE_integer("num_devices", 0, "Override the topology's device count.")
    flags.DEFINE_string(
        "mesh",
        "",
        "data,fsdp,tensor (default: the config's, replicated over data; see default_mesh).",
    )
    flags.DEFINE_string("micro_batch_rows", "", "Comma list to compile (default: search).")
    flags.DEFINE_integer("max_compiles", 4, "Most candidates the search compiles.")
    flags.DEFINE_integer("teacher_prompt_len", 0, "Teacher prompt bucket (0: worst case).")
    flags.DEFINE_string("layers", "", "a,b: compile a and b layers and extrapolate (slow CPU).")
    flags.DEFINE_bool("native", False, "Use the real devices (no forced CPU devices).")
    flags.DEFINE_enum(
        "backend",
        "auto",
        ["auto", "target", "cpu"],
        "Compiler: target = the topology's own (XLA:GPU/XLA:TPU, the [aot] extra); cpu = "
        "the XLA:CPU estimate; auto = target when the extra is installed.",
    )
    flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
    flags.DEFINE_string(
        "lengths",
        "worst",
        "Length mix: worst (every row at the limits), paper (the long-tail mix) or a JSON "
        "Lines file of [prompt_len, response_len(, teacher_prompt_len)] rows "
        "(srpo_jax/aot/length_mix.py); any but worst prints padded and packed layouts.",
    )
    flags.DEFINE_enum(
        "compile",
        "config",
        ["config", "padded", "packed", "both", "none"],
        "Layouts to compile at the length mix (config: the config's train.packed; none: "
        "print the layouts only).",
    )
    flags.DEFINE_string(
        "micro_batch_tokens", "", "Comma list of packed token budgets (default: the config's)."
    )


if __name__ == "__main__":
    from absl import app

    from srpo_jax.cli import parse_flags

    define_flags()
    app.run(main, flags_parser=parse_flags)
