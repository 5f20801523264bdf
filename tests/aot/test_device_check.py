"""srpo_jax.aot.device_check runs end to end at CPU-test size and writes one report; the
shell wrapper parses."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_tiny_run_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "srpo_jax.aot.device_check", "--tiny", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO_ROOT)
    report = {e["check"]: e for e in json.loads(out.read_text())}
    assert report["device"]["platform"] == "cpu"
    assert report["attention"]["status"] == "skipped"
    assert report["fused_distill"]["status"] == "skipped"
    step = report["srpo_step"]  # the demo config's SRPO step, all rows routed
    assert step["status"] == "ok" and step["finite"] and step["step_s"] > 0
    assert step["rows"] == 128 and step["teacher_tokens"] == 256 + 16
    assert step["predicted_peak_bytes"] > 0


def test_shell_wrapper_parses():
    subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "accelerator_check.sh")], check=True)


def test_device_sized_step_config_builds():
    """The on-device SRPO step's config passes the library's own validation (random init,
    one device), so the check cannot die on a config error the day a device is lent."""
    from srpo_jax.aot import device_check as accelerator_check

    cfg = accelerator_check._srpo_step_config(tiny=False)
    arch = cfg.model.architecture()
    assert (arch.num_layers, arch.hidden_size) == (28, 2048)  # Qwen3-1.7B
    assert cfg.model.random_init and cfg.model.remat and cfg.model.dtype == "bfloat16"
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 1, 1)
    assert cfg.train.mini_batch_prompts * cfg.algo.group_size == cfg.train.micro_batch_rows == 8
