"""srpo_jax.aot.targets: compile-only devices for every topology, the real compilers' figures.

Needs the [aot] extra (jax-cuda12-plugin, nvidia-cudnn-cu12, libtpu); skips only without it.
The figures are checked against what the program must hold (a sharded matmul's operand and
result bytes, its 2 M N K FLOPs), not against the code's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.aot import chips, topologies
from srpo_jax.aot.hlo_flops import dot_flops

pytest.importorskip("jax_plugins.xla_cuda12", reason="needs the [aot] extra")
pytest.importorskip("libtpu", reason="needs the [aot] extra")
from srpo_jax.aot import targets as aot  # noqa: E402


@pytest.mark.parametrize("name", sorted(topologies.TOPOLOGIES))
def test_sharded_matmul_compiles_for_every_topology(name):
    topo = topologies.get(name)
    devices = aot.compile_devices(name)
    assert len(devices) == topo.num_devices
    assert {d.platform for d in devices} == {"tpu" if topo.platform == "tpu" else "gpu"}
    mesh = Mesh(np.asarray(devices), ("d",))
    rows = NamedSharding(mesh, P("d"))
    m = 1024 * topo.num_devices
    x = jax.ShapeDtypeStruct((m, 2048), jnp.bfloat16, sharding=rows)
    w = jax.ShapeDtypeStruct((2048, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    _, a = aot.compile_for(name, lambda x, w: x @ w, x, w)
    assert a.compiler == aot.compiler_name(name)
    assert a.arguments == (1024 * 2048 + 2048 * 1024) * 2  # this device's rows + all of w
    assert a.outputs == 1024 * 1024 * 2
    assert a.flops == pytest.approx(2 * 1024 * 2048 * 1024, rel=0.01)
    assert a.flops_source == "hlo dots"


def _one_device(target):
    return jax.devices("cpu")[:1] if target == "cpu" else aot.compile_devices(target)[:1]


@pytest.mark.parametrize("target", ["cpu", "h100x8", "tpu-v5p-8"])
def test_hlo_dot_count_follows_loop_trip_counts(target):
    """A 6-layer scan's forward and backward: 3 matmuls of 2 x 256 x 512 x 512 per layer.
    XLA:GPU and XLA:CPU mark the loops' trip counts; XLA:TPU leaves them in the loop
    condition and writes its matmuls as convolutions. cost_analysis() counts a loop body
    once on the compilers that have one: far below the reference."""
    rep = NamedSharding(Mesh(np.asarray(_one_device(target)), ("d",)), P())
    x = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=rep)
    ws = jax.ShapeDtypeStruct((6, 512, 512), jnp.bfloat16, sharding=rep)

    def loss(ws, x):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0].sum()

    compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
    reference = 6 * 3 * 2 * 256 * 512 * 512
    assert dot_flops(compiled.as_text()) == reference
    assert aot.analyse(compiled).flops == reference
    if target != "h100x8":
        assert compiled.cost_analysis()["flops"] < reference / 3


def test_tpu_batched_matmul_count_sees_through_the_dilated_convolution():
    """XLA:TPU writes a batched matmul as a base-dilated convolution whose window mostly
    lands on the dilation's holes: only ceil(size / dilation) taps per dimension count."""
    mesh = Mesh(np.asarray(aot.compile_devices("tpu-v5p-8")), ("d",))
    a = jax.ShapeDtypeStruct((8, 4, 256, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P("d")))
    b = jax.ShapeDtypeStruct((8, 4, 128, 384), jnp.bfloat16, sharding=NamedSharding(mesh, P("d")))
    compiled = jax.jit(lambda a, b: jnp.einsum("bhij,bhjk->bhik", a, b)).lower(a, b).compile()
    assert "lhs_dilate" in compiled.as_text()
    assert dot_flops(compiled.as_text()) == 2 * (8 // 4) * 4 * 256 * 128 * 384  # one device


def test_gpu_target_config_carries_the_chip_figures():
    text = chips.gpu_target_config(chips.CHIPS["h20"])
    assert "core_count: 78" in text and "memory_bandwidth: 4000000000000" in text
    assert f"device_memory_size: {97871 * 2**20}" in text and "major: 9" in text
    with pytest.raises(ValueError, match="not a GPU"):
        chips.gpu_target_config(chips.CHIPS["v5p"])


def test_roofline_takes_the_slower_ceiling():
    r = aot.roofline("h20x8", flops=148e12, bytes_moved=8e12)
    assert (r.compute_s, r.memory_s, r.bound_s) == pytest.approx((1.0, 2.0, 2.0))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "srpo_jax.aot.targets", *args], capture_output=True, text=True
    )


def test_cli_lists_devices_and_refuses_an_unknown_topology(capsys):
    aot.main(["aot", "h20x8"])
    out = capsys.readouterr().out
    assert "h20x8: XLA:GPU" in out and "8 x NVIDIA H20" in out
    bad = _cli("h20x9")  # a process of its own: the exit status and stderr as a user sees them
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        f"error: unknown topology 'h20x9'; known: {', '.join(topologies.TOPOLOGIES)}"
    ]


def test_cli_prints_nothing_but_its_answer():
    """On this host without a GPU or TPU, importing jax loads the CUDA plugin, whose driver
    probe writes `cudart_stub.cc:...] Could not find cuda drivers` (and absl's pre-init
    warning) to stderr, and libtpu logs that it cannot tell its accelerator type: none of
    it may reach the user. stdout is the one line per target, stderr is empty."""
    ok = _cli("h20x8", "tpu-v5p-8")
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    assert ok.stdout.splitlines() == [
        "h20x8: XLA:GPU (jax-cuda12-plugin), 8 x NVIDIA H20",
        "tpu-v5p-8: XLA:TPU (libtpu), 4 x TPU v5",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layout"), [("h20x8", "fsdp"), ("tpu-v5p-8", "fsdp"), ("tpu-v5p-8", "tensor")]
)
def test_learner_train_step_compiles_on_the_target_mesh(name, layout):
    """The plan's compile of the real train step (tiny model, SRPO, every row routed) runs
    on the target's compile-only mesh: the wiring phase 2 puts into the plan. With the
    benchmark configs' tensor layout the vocabulary is split, so the fused loss's `auto`
    must leave the Mosaic kernel (which cannot be partitioned) for the XLA path."""
    import importlib.util

    from srpo_jax import config as config_lib
    from srpo_jax.aot import plan
    from srpo_jax.sharding import MeshConfig
    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("base", REPO_ROOT / "configs" / "base.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    c = base.get_config()
    c.model.overrides = {"num_layers": 2, "head_dim": 128}
    cfg = config_lib.from_config_dict(c)
    devices = topologies.get(name).num_devices
    mesh_cfg = MeshConfig(1, devices, 1) if layout == "fsdp" else MeshConfig(1, 1, devices)
    mesh = aot.target_mesh(name, mesh_cfg)
    shape = plan.StepShape(
        prompts=8,
        group_size=4,
        mini_batch_prompts=8,
        micro_batch_rows=8,
        prompt_len=64,
        response_len=128,
        teacher_prompt_len=64,
    )
    # As in tests/model/test_attention.py: the splash backward is traced under the
    # process-wide matmul precision, which conftest raises to "highest" for the fp32 parity
    # tests; main and the plan run at "default", which Mosaic takes for bf16 operands.
    with jax.default_matmul_precision("default"):
        figures = plan.compile_step(cfg, cfg.model.architecture(), mesh, shape)
    assert figures.temp > 0 and figures.params > 0
    assert figures.peak > figures.params + figures.teacher + figures.opt


_V5P8_TENSOR_STEP = """
import jax
from srpo_jax import config as config_lib
from srpo_jax.aot import targets as aot
from srpo_jax.config import load_config_module
from srpo_jax.sharding import MeshConfig
from srpo_jax.aot import plan

c = load_config_module("configs/qwen3_4b_chem.py", "qwen3_4b_chem.py").get_config("method=srpo")
c.model.random_init = True
c.model.overrides = dict(num_layers=1, hidden_size=512, intermediate_size=1024,
                         vocab_size=4096, num_heads=4, num_kv_heads=4)
cfg = config_lib.from_config_dict(c)
mesh = aot.target_mesh("tpu-v5p-8", MeshConfig(1, 1, 4))
shape = plan.StepShape(prompts=2, group_size=1, mini_batch_prompts=2, micro_batch_rows=2,
                       prompt_len=2048, response_len=8192, teacher_prompt_len=2048)
with jax.default_matmul_precision("default"):
    plan.compile_step(cfg, cfg.model.architecture(), mesh, shape, "XLA:TPU")
print("compiled")
"""


@pytest.mark.slow
def test_libtpu_workaround_lets_the_v5p8_tensor_step_compile():
    """jax_startup.LIBTPU_WORKAROUNDS: without it libtpu aborts the process compiling this
    step (tensor=4, 2 rows of 10240 tokens; rotated_pincer_fusion_emitter Check failed);
    with it the step compiles. Each compile is a process of its own: the abort kills it."""
    from tests.conftest import REPO_ROOT

    def compile_with(libtpu_args):
        env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
        if libtpu_args:
            env["LIBTPU_INIT_ARGS"] = libtpu_args
        return subprocess.run(
            [sys.executable, "-c", _V5P8_TENSOR_STEP], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip

    fixed = compile_with("")
    assert fixed.returncode == 0 and "compiled" in fixed.stdout, fixed.stderr[-3000:]
    broken = compile_with("--xla_tpu_enable_all_reduce_scatter_fusion=true")
    # If this starts passing, libtpu fixed the emitter and the workaround can go.
    assert broken.returncode != 0 and "s_count.has_value()" in broken.stderr, (
        "libtpu no longer crashes without the workaround: drop it from LIBTPU_WORKAROUNDS"
    )
