"""The trainer's path from the run config's rollout.sglang section to an SGLangEngine."""

import pytest

from srpo_jax import config as run_config
from srpo_jax.rollout import sglang


def test_engine_from_config_with_running_servers(tmp_path):
    section = run_config.SGLangConfig(
        urls=("http://127.0.0.1:30001/", "http://127.0.0.1:30002"),
        sync="update_from_disk",
        timeout_s=7.0,
        max_retries=1,
    )
    engine = sglang.engine_from_config(section, None, None, workdir=tmp_path)
    try:
        assert engine.urls == ("http://127.0.0.1:30001", "http://127.0.0.1:30002")
        assert engine.export_dir == tmp_path / "export"
        assert engine.config.timeout_s == 7.0 and engine.config.max_retries == 1
        assert engine.config.num_servers == 0 and not engine.config.launch_command
    finally:
        engine.close()


def test_engine_from_config_rejects_restart_without_launch_command(tmp_path):
    section = run_config.SGLangConfig(urls=("http://127.0.0.1:30001",), sync="restart")
    with pytest.raises(ValueError, match="restart"):
        sglang.engine_from_config(section, None, None, workdir=tmp_path)
