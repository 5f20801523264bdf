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


@pytest.mark.parametrize("launched", [True, False])
def test_the_trainer_pushes_the_initial_weights_only_to_running_servers(
    monkeypatch, tmp_path, launched
):
    """Launched servers start on the one export engine_from_config writes; running servers
    get the learner's weights pushed once, as the resumed weight version."""
    import dataclasses

    from srpo_jax.trainer import setup

    calls = []

    class Engine:
        def update_weights(self, params, version):
            calls.append(("update_weights", params, version))

    def fake_engine_from_config(section, model_cfg, params, *, workdir, version):
        calls.append(("engine_from_config", params, version))
        return Engine()

    monkeypatch.setattr(sglang, "engine_from_config", fake_engine_from_config)
    where = dict(launch_command="srv {port}") if launched else dict(urls=("http://h:1",))
    rollout = dataclasses.replace(
        run_config.Config().rollout, engine="sglang", sglang=run_config.SGLangConfig(**where)
    )
    cfg = dataclasses.replace(run_config.Config(), rollout=rollout)
    setup.make_engine(cfg, None, "params", None, 0, tmp_path, 7)
    want = [("engine_from_config", "params", 7)]
    assert calls == want if launched else want + [("update_weights", "params", 7)]
