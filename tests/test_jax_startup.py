"""The driver-probe filter drops exactly the CUDA plugin's two start-up lines and keeps the rest."""

import os
import subprocess
import sys

import pytest

from srpo_jax import jax_startup

ABSL_LINE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
)
PROBE_LINE = (
    "I0000 00:00:1796172550.491318   26064 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
)


def test_probe_lines_are_dropped_and_others_kept_in_order():
    # A real process: under pytest's capture sys.stderr does not write through fd 2.
    script = (
        "import os, sys\n"
        "from srpo_jax import jax_startup\n"
        "with jax_startup.driver_probe_filtered():\n"
        f"    os.write(2, {(ABSL_LINE + PROBE_LINE + 'real warning one').encode()!r} + b'\\n')\n"
        "    print('python-level line', file=sys.stderr)\n"
        f"    os.write(2, {(PROBE_LINE + 'real warning two').encode()!r} + b'\\n')\n"
        "print('after', file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stderr == "real warning one\npython-level line\nreal warning two\nafter\n"


def test_stderr_is_restored_after_an_exception(capfd):
    with pytest.raises(RuntimeError), jax_startup.driver_probe_filtered():
        os.write(2, b"kept before the error\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept before the error\nafter\n"


def test_main_bad_flag_prints_one_line_even_with_the_cuda_plugin():
    """With the [aot] extra the CUDA plugin probes for drivers at import; the CLI's stderr
    must still be the one error line (without the extra this checks the plain path)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", "--config=configs/demo.py", "--bogus_flag=1"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), proc.stderr


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "--xla_tpu_enable_all_reduce_scatter_fusion=false"),
        (
            "--xla_tpu_enable_latency_hiding_scheduler=true",
            "--xla_tpu_enable_latency_hiding_scheduler=true "
            "--xla_tpu_enable_all_reduce_scatter_fusion=false",
        ),
        (  # the user's own value of the flag wins
            "--xla_tpu_enable_all_reduce_scatter_fusion=true",
            "--xla_tpu_enable_all_reduce_scatter_fusion=true",
        ),
    ],
)
def test_libtpu_workarounds_are_appended_unless_the_user_set_them(monkeypatch, before, after):
    if before is None:
        monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    else:
        monkeypatch.setenv("LIBTPU_INIT_ARGS", before)
    jax_startup.add_libtpu_workarounds()
    assert os.environ["LIBTPU_INIT_ARGS"] == after


def test_importing_srpo_jax_sets_the_workarounds_before_any_backend():
    env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
    script = "import os, srpo_jax; print(os.environ['LIBTPU_INIT_ARGS'])"
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "--xla_tpu_enable_all_reduce_scatter_fusion=false"


LIBTPU_LINE = (
    "Failed to find host bounds for accelerator type: WARNING: could not determine TPU "
    "accelerator type, please set env var `TPU_ACCELERATOR_TYPE` manually, otherwise "
    "libtpu.so may not properly initialize.\n"
)


def test_libtpu_no_tpu_line_is_noise_and_a_real_host_bounds_error_is_not():
    assert jax_startup.is_driver_probe_noise(LIBTPU_LINE)
    # A named accelerator type that libtpu cannot place is a real problem: it stays.
    assert not jax_startup.is_driver_probe_noise(
        "Failed to find host bounds for accelerator type: v5p-9\n"
    )


def _host(root, *paths: str, pci_vendor: str | None = None):
    """A fake filesystem root holding `paths` (and one PCI device of `pci_vendor`)."""
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    if pci_vendor is not None:
        device = root / "sys/bus/pci/devices/0000:00:04.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(pci_vendor + "\n")
    return str(root)


@pytest.mark.parametrize(
    ("paths", "pci_vendor", "present"),
    [
        ((), None, False),  # a CPU host
        (("dev/null", "proc/cpuinfo"), "0x8086", False),  # an Intel PCI device only
        (("proc/driver/nvidia/version",), None, True),  # the NVIDIA driver
        (("dev/nvidiactl", "dev/nvidia0"), None, True),  # a container's NVIDIA nodes
        (("dev/accel0",), None, True),  # a TPU v4/v5 chip
        (("dev/vfio/0",), None, True),  # a TPU v6e chip
        (("dev/vfio/vfio",), None, False),  # the vfio control node alone: no device
        ((), "0x1ae0", True),  # a Google (TPU) PCI device
        (("dev/kfd",), None, True),  # AMD ROCm
    ],
)
def test_accelerator_present_reads_device_nodes_driver_and_pci(
    tmp_path, paths, pci_vendor, present
):
    assert (
        jax_startup.accelerator_present(_host(tmp_path, *paths, pci_vendor=pci_vendor)) is present
    )


def test_default_platforms_pins_cpu_only_without_accelerator_or_user_choice(tmp_path):
    cpu_host = _host(tmp_path / "cpu")
    gpu_host = _host(tmp_path / "gpu", "dev/nvidia0")
    assert jax_startup.default_platforms({}, cpu_host) == "cpu"
    assert jax_startup.default_platforms({}, gpu_host) is None  # JAX finds the GPU itself
    for user_choice in ("", "cpu", "cuda", "tpu,cpu"):  # set by the user: never overridden
        assert jax_startup.default_platforms({"JAX_PLATFORMS": user_choice}, cpu_host) is None


@pytest.mark.parametrize("user_choice", [None, "", "cpu"])
def test_import_jax_pins_the_platforms_unless_the_user_chose(user_choice):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    if user_choice is not None:
        env["JAX_PLATFORMS"] = user_choice
    script = (
        "from srpo_jax import jax_startup\n"
        "jax_startup.import_jax()\n"
        "import jax\n"
        "print(repr(jax.config.jax_platforms))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    if user_choice is None:
        expected = None if jax_startup.accelerator_present() else "cpu"
    else:
        expected = user_choice
    assert proc.stdout.strip() == repr(expected), proc.stderr
