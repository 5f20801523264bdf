"""srpo_jax.accelerator_check runs end to end at CPU-test size and writes one report; the
shell wrapper parses."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_tiny_run_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "srpo_jax.accelerator_check", "--tiny", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO_ROOT)
    report = {e["check"]: e for e in json.loads(out.read_text())}
    assert report["device"]["platform"] == "cpu"
    assert report["attention"]["status"] == "skipped"
    assert report["fused_distill"]["status"] == "skipped"
    step = report["model_step"]
    assert step["status"] == "ok" and step["step_s"] > 0 and step["predicted_peak_bytes"] > 0


def test_shell_wrapper_parses():
    subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "accelerator_check.sh")], check=True)
