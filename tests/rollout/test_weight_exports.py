"""The export folder shared by SGLangEngine and LeaderEngine, and the one export that
launched servers start on."""

from __future__ import annotations

import pathlib
import sys

import pytest

from srpo_jax.rollout.config import SGLangConfig
from srpo_jax.rollout.sglang import SGLangEngine
from srpo_jax.rollout.weight_exports import WeightExports


class Recorder:
    """A fake exporter (config.json + params bytes) that logs its calls."""

    def __init__(self):
        self.log: list[str] = []

    def export(self, params, path: pathlib.Path) -> None:
        self.log.append(f"export {path.name}")
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"\0" * params)


def _names(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_write_replaces_a_leftover_and_prune_keeps_the_newest(tmp_path):
    rec = Recorder()
    exports = WeightExports(tmp_path, rec.export, keep=2)
    leftover = exports.path(1)
    leftover.mkdir()
    (leftover / "stale").write_text("x")
    for v in range(1, 5):
        path = exports.write(3 * v, v)
        assert path == tmp_path / f"step_{v:08d}" and (path / "config.json").is_file()
        exports.prune()
    assert _names(tmp_path) == ["step_00000003", "step_00000004"]
    assert (tmp_path / "step_00000004" / "model.safetensors").stat().st_size == 12


def test_an_export_is_written_aside_and_renamed_whole(tmp_path):
    """The exporter writes step_N.partial; only a complete one becomes step_N. One that
    fails (here: its exporter raises halfway) leaves nothing of its version, and the
    previous export as it was."""
    rec = Recorder()
    exports = WeightExports(tmp_path, rec.export, keep=2)
    exports.write(4, 1)
    assert rec.log == ["export step_00000001.partial"]

    def fails_halfway(params, path):
        rec.export(params, path)
        raise RuntimeError("exporter failed")

    exports._exporter = fails_halfway
    with pytest.raises(RuntimeError, match="exporter failed"):
        exports.write(8, 2)
    assert _names(tmp_path) == ["step_00000001"]
    assert (tmp_path / "step_00000001" / "model.safetensors").stat().st_size == 4
    exports._exporter = rec.export
    leftover = tmp_path / "step_00000002.partial"  # as a killed process leaves it
    leftover.mkdir()
    exports.write(8, 2)
    assert _names(tmp_path) == ["step_00000001", "step_00000002"]


def test_a_non_writer_meets_the_barriers_and_deletes_nothing(tmp_path):
    """Off process 0 the export is the collective gather (nothing written here): it is
    bracketed by the barriers, and only process 0 clears or deletes folders."""
    log: list[str] = []
    for v in (1, 3):
        (tmp_path / f"step_{v:08d}").mkdir()  # what process 0 wrote
    other = WeightExports(
        tmp_path,
        lambda params, path: log.append(f"export {path.name}"),
        keep=1,
        writer=False,
        barrier=lambda name: log.append(f"barrier {name.split()[-1]}"),
    )
    other.write(0, 3)
    other.write(0, 4)
    other.prune()
    assert log == [
        "barrier cleared", "export step_00000003.partial", "barrier written",
        "barrier cleared", "export step_00000004.partial", "barrier written",
    ]  # fmt: skip
    assert _names(tmp_path) == ["step_00000001", "step_00000003"]


def test_an_empty_root_is_a_temporary_folder_removed_on_close():
    exports = WeightExports("", Recorder().export, keep=1)
    exports.write(1, 0)
    assert exports.root.is_dir() and _names(exports.root) == ["step_00000000"]
    exports.close()
    assert not exports.root.exists()


# A stand-in server: answers /health, and records the model path it was launched on.
_SERVER = (
    "import http.server, pathlib, sys\n"
    "pathlib.Path(sys.argv[3]).write_text(sys.argv[1])\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def log_message(self, *a): pass\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[2])), H).serve_forever()\n"
)


def test_launched_servers_start_on_the_one_export_of_the_initial_weights(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    seen = tmp_path / "seen"
    cfg = SGLangConfig(
        launch_command=f"{sys.executable} {script} {{model_path}} {{port}} {seen}",
        base_port=0,
        export_dir=str(tmp_path / "exports"),
        startup_timeout_s=60,
    )
    rec = Recorder()
    with SGLangEngine(cfg, exporter=rec.export, initial_params=7, initial_version=3) as engine:
        assert rec.log == ["export step_00000003.partial"]  # one export, the engine's version
        assert seen.read_text() == str(tmp_path / "exports" / "step_00000003")
        assert _names(engine.export_dir) == ["logs", "step_00000003"]
