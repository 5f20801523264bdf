"""SGLang engine without a real server: config validation, seeds, process lifecycle, and the
/update_weights_from_disk protocol against a local stand-in (sglang-jax has no such route).

The request fields are checked against the ones SGLang documents for
UpdateWeightFromDiskReqInput; the response handling against its documented answers
(success true/false, HTTP 400 on a failed load)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest
from sglang_env import StandIn, timer

from srpo_jax.rollout import sglang_server
from srpo_jax.rollout.engine import RolloutEngine, RolloutError, SamplingParams
from srpo_jax.rollout.sglang import SGLangConfig, SGLangEngine, sample_seed

# SGLang's documented UpdateWeightFromDiskReqInput fields.
DOCUMENTED_UPDATE_FIELDS = {
    "model_path", "load_format", "abort_all_requests", "weight_version", "is_async",
    "torch_empty_cache", "keep_pause", "recapture_cuda_graph", "token_step", "flush_cache",
    "manifest",
}  # fmt: skip


def _fake_exporter(params, path: pathlib.Path) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\0" * params)


def _engine(url, tmp_path, **kw) -> SGLangEngine:
    cfg = SGLangConfig(urls=(url,), export_dir=str(tmp_path / "exports"), **kw)
    return SGLangEngine(cfg, exporter=_fake_exporter)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(), "urls"),
        (dict(urls="http://a:1"), "urls"),
        (dict(urls=("a:1",)), "urls"),
        (dict(urls=("http://a:1",), launch_command="x"), "launch_command"),
        (dict(launch_command="x {port}", num_servers=0), "num_servers"),
        (dict(urls=("http://a:1",), timeout_s=0), "timeout_s"),
        (dict(urls=("http://a:1",), max_retries=-1), "max_retries"),
        (dict(urls=("http://a:1",), backoff_s=-1), "backoff_s"),
        (dict(urls=("http://a:1",), max_concurrency=0), "max_concurrency"),
        (dict(urls=("http://a:1",), keep_exports=0), "keep_exports"),
        (dict(urls=("http://a:1",), sync="nccl"), "sync"),
        (dict(urls=("http://a:1",), sync="restart"), "sync"),
        (dict(urls=("http://a:1",), pause_mode="later"), "pause_mode"),
        # in_place keeps requests in the batch: the server then refuses the flush of a sync.
        (dict(urls=("http://a:1",), pause_mode="in_place"), "pause_mode"),
        # Not a server we know the deterministic flag of.
        (dict(launch_command="python serve.py {port}", deterministic=True), "deterministic"),
        (dict(launch_command="x", num_servers=2, base_port=65535), "base_port"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    # Field checks run on construction, the where-are-the-servers checks when an engine is
    # built (the run config's section may stay empty while rollout.engine is "jax").
    with pytest.raises(ValueError, match=rf"config\.rollout\.sglang\.{field}\b"):
        SGLangConfig(**kw).check_servers()


def test_engine_satisfies_protocol(tmp_path):
    with _engine("http://127.0.0.1:9", tmp_path) as engine:
        assert isinstance(engine, RolloutEngine)


def test_sample_seeds_distinct_and_int32():
    seeds = {
        sample_seed(s, t, p, j) for s in (0, 1) for t in (0, 7) for p in range(4) for j in range(4)
    }
    assert len(seeds) == 2 * 2 * 4 * 4
    assert all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(3, 1, 2, 0) == sample_seed(3, 1, 2, 0)


def test_render_command_fills_placeholders_and_rejects_unknown():
    argv = sglang_server.render_command(
        "python -m x --model-path {model_path} --port {port} --host {host} --i {index}",
        model_path="/a b/c",
        host="127.0.0.1",
        port=5,
        index=1,
    )
    assert argv[:6] == ["python", "-m", "x", "--model-path", "/a", "b/c"]
    assert argv[6:] == ["--port", "5", "--host", "127.0.0.1", "--i", "1"]
    with pytest.raises(ValueError, match="unknown placeholder"):
        sglang_server.render_command("x {gpu}", model_path="m", host="h", port=1, index=0)


@pytest.mark.parametrize(
    "template, deterministic, flags",
    [
        # SGLang 0.5.23 and sglang-jax 0.1.0rc0 spell the flag differently (their server_args).
        ("python -m sglang.launch_server --port {port}", True,
         ("--skip-tokenizer-init", "--enable-deterministic-inference")),
        ("sglang serve --port {port}", False, ("--skip-tokenizer-init",)),
        ("/v/bin/python -m sgl_jax.launch_server --port {port}", True,
         ("--skip-tokenizer-init", "--enable-deterministic-sampling")),
        # What the template already says is not repeated.
        ("python -m sglang.launch_server --tokenizer-path=/t --enable-deterministic-inference",
         True, ()),
        ("python -m sgl_jax.launch_server --skip-tokenizer-init", False, ()),
        ("python serve.py --port {port}", False, ()),  # unknown server: left as written
    ],
)  # fmt: skip
def test_launch_flags_per_server_kind(template, deterministic, flags):
    assert sglang_server.launch_flags(template, deterministic=deterministic) == flags
    argv = sglang_server.render_command(
        template, model_path="/m", host="h", port=1, index=0, extra=flags
    )
    assert argv[len(argv) - len(flags) :] == list(flags)


def test_servers_given_by_url_warn_once_that_determinism_is_unchecked(tmp_path, caplog):
    from srpo_jax.rollout import sglang

    sglang._warned_unchecked = False
    for _ in range(2):
        with _engine("http://127.0.0.1:9", tmp_path, deterministic=True):
            pass
    warnings = [r.getMessage() for r in caplog.records if "deterministic" in r.getMessage()]
    assert len(warnings) == 1
    assert "http://127.0.0.1:9" in warnings[0]
    assert "--enable-deterministic-inference" in warnings[0]
    assert "--enable-deterministic-sampling" in warnings[0]


# ---------------------------------------------------------------- process lifecycle
def test_server_that_dies_at_startup_reports_its_log(tmp_path):
    argv = [sys.executable, "-c", "print('model config is broken'); raise SystemExit(3)"]
    server = sglang_server.ServerProcess(argv, "http://127.0.0.1:9", tmp_path / "s.log")
    server.start()
    with pytest.raises(RolloutError, match=r"(?s)exited with code 3.*model config is broken"):
        server.wait_healthy(timeout_s=30, poll_s=0.1)
    server.stop()


def test_server_that_never_gets_healthy_times_out(tmp_path):
    argv = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"]
    server = sglang_server.ServerProcess(
        argv, f"http://127.0.0.1:{sglang_server.free_port()}", tmp_path / "s.log"
    )
    server.start()
    with timer() as t, pytest.raises(RolloutError, match=r"(?s)not healthy after 1 s.*loading"):
        server.wait_healthy(timeout_s=1, poll_s=0.1)
    assert t[0] < 10
    server.stop(grace_s=2)


# A stand-in server: answers /health; launch number N (counted in a file) exits at once when
# N is listed in FAIL (comma-separated), like a server that cannot boot.
_FLAKY_SERVER = (
    "import http.server, pathlib, sys\n"
    "count = pathlib.Path(sys.argv[2])\n"
    "n = int(count.read_text()) + 1 if count.exists() else 1\n"
    "count.write_text(str(n))\n"
    "if str(n) in sys.argv[3].split(','): print(f'launch {n}: Not enough memory'); sys.exit(1)\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def log_message(self, *a): pass\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


@pytest.mark.parametrize("max_restarts, fail", [(1, "2"), (2, "2,3"), (1, "2,3")])
def test_a_failed_relaunch_is_retried_within_the_restart_budget(tmp_path, max_restarts, fail):
    """sync=restart: launch 1 is the initial one, launch 2 the relaunch on version 1's
    export. Relaunches that fail are tried again while max_restarts allows, then the run's
    error names the server's log."""
    script, count = tmp_path / "server.py", tmp_path / "launches"
    script.write_text(_FLAKY_SERVER)
    cfg = SGLangConfig(
        launch_command=f"{sys.executable} {script} {{port}} {count} {fail}",
        base_port=0, export_dir=str(tmp_path / "exports"), startup_timeout_s=60,
        sync="restart", max_restarts=max_restarts,
    )  # fmt: skip
    with SGLangEngine(cfg, exporter=_fake_exporter, initial_params=1, initial_version=0) as e:
        failures = len(fail.split(","))
        if failures > max_restarts:
            with pytest.raises(RolloutError, match=r"(?s)exited with code 1.*Not enough memory"):
                e.update_weights(1, version=1)
            assert e.servers == ()  # nothing left running
        else:
            e.update_weights(1, version=1)
            assert [s.alive() for s in e.servers] == [True]
        assert e.num_restarts == min(failures, max_restarts)
        assert count.read_text() == str(2 + min(failures, max_restarts))


def test_stop_kills_the_whole_process_group(tmp_path):
    # A parent that ignores SIGTERM with a child: both must be gone after stop().
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "s.log"
    server = sglang_server.ServerProcess([sys.executable, "-c", script], "http://x:1", log)
    server.start()
    for _ in range(100):
        lines = log.read_text().split()
        if len(lines) > 0 and lines[-1].isdigit():
            break
        time.sleep(0.05)
    child = int(log.read_text().split()[-1])
    server.stop(grace_s=1)
    assert server.proc is None
    for _ in range(50):
        if _gone(child):
            break
        time.sleep(0.1)
    assert _gone(child), f"child {child} of the stopped server still runs"


def _gone(pid: int) -> bool:
    # A killed child may linger as a zombie until init reaps it: that counts as gone.
    status = pathlib.Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()
    except OSError:
        return True


# ---------------------------------------------------------------- generation errors
def test_down_server_is_named_in_bounded_time(tmp_path):
    url = f"http://127.0.0.1:{sglang_server.free_port()}"  # nobody listens here
    pattern = rf"{url} failed POST /generate after 3 attempt"
    engine = _engine(url, tmp_path, max_retries=2, backoff_s=0.1)
    with engine, timer() as t, pytest.raises(RolloutError, match=pattern):
        engine.generate([[1, 2]], 2, SamplingParams(max_new_tokens=4))
    assert t[0] < 10


# ---------------------------------------------------------------- update_weights_from_disk
def test_update_from_disk_follows_pause_flush_update_continue(tmp_path):
    with StandIn("ok") as s, _engine(s.url, tmp_path, load_format="safetensors") as engine:
        metrics = engine.update_weights(1000, version=7)
    posts = [(p, b) for m, p, b in s.requests if m == "POST"]
    assert [p for p, _ in posts] == [
        "/pause_generation",
        "/flush_cache",
        "/update_weights_from_disk",
        "/continue_generation",
    ]
    assert posts[0][1] == {"mode": "abort"}
    body = posts[2][1]
    assert set(body) <= DOCUMENTED_UPDATE_FIELDS
    assert body["weight_version"] == "7"  # SGLang types weight_version as a string
    assert body["load_format"] == "safetensors"
    assert pathlib.Path(body["model_path"]) == tmp_path / "exports" / "step_00000007"
    assert ("GET", "/model_info", None) in s.requests  # the reported version was checked
    assert metrics["sync/bytes"] == 1000 + 2
    assert metrics["sync/seconds"] >= metrics["sync/export_s"] >= 0


def test_given_checkpoint_dir_is_used_as_is(tmp_path):
    ckpt = tmp_path / "ckpt"
    _fake_exporter(10, ckpt)
    with StandIn("ok") as s, _engine(s.url, tmp_path) as engine:
        engine.update_weights(str(ckpt), version=1)
    body = next(b for m, p, b in s.requests if p == "/update_weights_from_disk")
    assert body["model_path"] == str(ckpt)
    assert ckpt.is_dir()


def test_relative_export_dir_is_sent_resolved(tmp_path, monkeypatch):
    # The server resolves a relative path in its own working directory, not ours.
    monkeypatch.chdir(tmp_path)
    with StandIn("ok") as s:
        cfg = SGLangConfig(urls=(s.url,), export_dir="rel/exports")
        with SGLangEngine(cfg, exporter=_fake_exporter) as engine:
            engine.update_weights(10, version=2)
    body = next(b for m, p, b in s.requests if p == "/update_weights_from_disk")
    assert body["model_path"] == str(tmp_path.resolve() / "rel" / "exports" / "step_00000002")


def test_old_exports_are_removed(tmp_path):
    with StandIn("ok") as s, _engine(s.url, tmp_path, keep_exports=2) as engine:
        for v in range(1, 5):
            engine.update_weights(10, version=v)
    left = sorted(p.name for p in (tmp_path / "exports").iterdir() if p.name.startswith("step_"))
    assert left == ["step_00000003", "step_00000004"]


@pytest.mark.parametrize(
    "behavior, pattern", [("refuse", "HTTP 400"), ("false", "refused the weights")]
)
def test_failed_update_is_an_error_and_the_server_resumes(tmp_path, behavior, pattern):
    with StandIn(behavior) as s, _engine(s.url, tmp_path) as engine:
        match = rf"{s.url}.*{pattern}|{pattern}.*{s.url}"
        with pytest.raises(RolloutError, match=match):  # noqa: SIM117
            engine.update_weights(10, version=1)
    assert s.requests[-1][1] == "/continue_generation"


def test_update_timeout_is_bounded(tmp_path):
    with StandIn("slow", slow_s=3.0) as s:
        pattern = rf"{s.url} failed POST /update_weights_from_disk after 2 attempt.*timeout"
        engine = _engine(s.url, tmp_path, timeout_s=0.5, max_retries=1, backoff_s=0.1)
        with engine, timer() as t, pytest.raises(RolloutError, match=pattern):
            engine.update_weights(10, version=1)
    assert t[0] < 5


def test_stale_reported_version_is_an_error(tmp_path):
    match = "reports weight_version 'default'.*expected 3"
    with (
        StandIn("stale") as s,
        _engine(s.url, tmp_path) as engine,
        pytest.raises(RolloutError, match=match),
    ):
        engine.update_weights(10, version=3)


def test_sync_none_pushes_nothing_and_keeps_the_served_version(tmp_path):
    """sync="none" (servers that cannot load weights): no export, no request, and the
    rollouts keep reporting the version the servers started on."""
    with StandIn("ok") as s, _engine(s.url, tmp_path, sync="none") as engine:
        metrics = engine.update_weights(10, version=4)
        assert engine._version == 0
    assert s.requests == []
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())
    assert metrics["sync/bytes"] == 0.0 and metrics["sync/seconds"] == 0.0
    assert metrics["sync/route"] == 3.0 and metrics["sync/num_servers"] == 1.0


# ---------------------------------------------------------------- launch/sglang_pool.sh
def test_pool_script_dry_run_lays_out_servers_over_gpus():
    script = pathlib.Path(__file__).resolve().parents[2] / "launch" / "sglang_pool.sh"
    args = ["--model-path", "/m", "--tp", "2", "--gpus-per-node", "4", "--nodes", "a b"]
    out = subprocess.run(
        ["bash", str(script), *args, "--base-port", "31000", "--dry-run", "--", "--x", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    launches = [line for line in out if line.startswith("srun")]
    assert len(launches) == 4  # 2 nodes x (4 GPUs / tp 2)
    assert "-w a " in launches[1] and "CUDA_VISIBLE_DEVICES=2,3 " in launches[1]
    assert "--host a --port 31001 --tp-size 2 --x 1" in launches[1]
    assert "python -m sglang.launch_server --model-path /m" in launches[0]
    urls = [line.removeprefix("url: ") for line in out if line.startswith("url: ")]
    assert urls == ["http://a:31000", "http://a:31001", "http://b:31000", "http://b:31001"]
