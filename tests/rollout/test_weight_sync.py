"""rollout.sglang.sync = "distributed": the learner broadcasts its weights over a real
torch.distributed gloo group to receiver processes (weight_receiver.py: SGLang 0.5.23's
routes and request fields, each tp rank a process holding a transformers Qwen3ForCausalLM).

The references are independent of the route: `save_hf_params`' checkpoint (what the disk
route writes) for the bytes, and the JAX model's own forward for the logits that transformers
computes from the received weights."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import requests
from flax import nnx
from safetensors.numpy import load_file

from srpo_jax.config_checks import ConfigError
from srpo_jax.model import Qwen3, save_hf_params, tiny
from srpo_jax.model.hf_io import hf_tensors
from srpo_jax.rollout import weight_sync
from srpo_jax.rollout.config import RolloutConfig, SGLangConfig
from srpo_jax.rollout.sglang import SGLangEngine
from srpo_jax.rollout.weight_buckets import make_buckets

HERE = pathlib.Path(__file__).resolve().parent
RECEIVER = HERE / "weight_receiver.py"
WORKER = HERE / "weight_sync_worker.py"
MODEL_CFG = tiny(vocab_size=160)
BUCKET_MB = 0.01  # 10 KiB: several buckets, and the embedding (20 KiB) grows its own
IDS = [[3, 17, 42, 99, 5, 8, 150, 1]]


def _free_port() -> int:
    return weight_sync.free_port()


class Receiver:
    """One weight_receiver.py process on 127.0.0.1."""

    def __init__(self, model_path, tmp: pathlib.Path, *, tp=1, port=None, extra=()):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [str(model_path), str(tp), *extra]
        self.log = tmp / f"receiver_{self.port}.log"
        self.start()

    def start(self, timeout_s: float = 120.0) -> None:
        model_path, tp, *extra = self.args
        cmd = [sys.executable, str(RECEIVER), f"--port={self.port}", f"--model-path={model_path}",
               f"--tp={tp}", *extra]  # fmt: skip
        with open(self.log, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"receiver on {self.port} not healthy: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL to the receiver and its tp rank processes (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def version(self) -> str:
        return requests.get(self.url + "/model_info", timeout=10).json()["weight_version"]

    def dump(self, out: pathlib.Path) -> pathlib.Path:
        out.mkdir(parents=True, exist_ok=True)
        r = requests.post(
            self.url + "/test/dump", json={"dir": str(out), "input_ids": IDS}, timeout=60
        )
        assert r.status_code == 200, r.text
        return out


def _params(seed: int):
    return nnx.state(Qwen3(MODEL_CFG, rngs=nnx.Rngs(seed)), nnx.Param)


def _export(params, path: pathlib.Path) -> pathlib.Path:
    save_hf_params(params, MODEL_CFG, path, dtype="bfloat16")
    return path


def _tensors(path: pathlib.Path, file="*.safetensors") -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(path.glob(file)):
        out.update(load_file(f))
    return out


def _assert_same_bytes(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name


def _engine(urls, tmp: pathlib.Path, **kw) -> SGLangEngine:
    settings = dict(
        urls=tuple(urls), export_dir=str(tmp / "exports"), sync="distributed",
        group_backend="gloo", bucket_mb=BUCKET_MB, group_timeout_s=20, timeout_s=60,
        max_retries=0,
    )  # fmt: skip
    return SGLangEngine(SGLangConfig(**(settings | kw)), model_config=MODEL_CFG)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Params A (the receivers start on them) and B, with their save_hf_params exports."""
    tmp = tmp_path_factory.mktemp("ckpt")
    a, b = _params(0), _params(1)
    return {"A": (a, _export(a, tmp / "A")), "B": (b, _export(b, tmp / "B"))}


@pytest.fixture(scope="module")
def two_receivers(checkpoints, tmp_path_factory):
    """A tp=1 and a tp=2 receiver (world 4), pushed B (flattened buckets, version 1), then
    A (one broadcast per tensor, version 2); their dumps after each push."""
    tmp = tmp_path_factory.mktemp("two")
    recs = [Receiver(checkpoints["A"][1], tmp, tp=1), Receiver(checkpoints["A"][1], tmp, tp=2)]
    out = {"receivers": recs, "metrics": [], "dumps": [], "versions": []}
    try:
        for version, key, flatten in ((1, "B", True), (2, "A", False)):
            with _engine([r.url for r in recs], tmp / key, bucket_flatten=flatten) as engine:
                out["metrics"].append(engine.update_weights(checkpoints[key][0], version))
            out["versions"].append([r.version() for r in recs])
            out["dumps"].append([r.dump(tmp / f"dump{version}_{i}") for i, r in enumerate(recs)])
        yield out
    finally:
        for r in recs:
            r.kill()


def test_every_rank_receives_save_hf_params_bytes_and_transformers_matches_jax(
    two_receivers, checkpoints
):
    pushes = zip(two_receivers["metrics"], two_receivers["dumps"], "BA", strict=True)
    for metrics, dumps, key in pushes:
        want = _tensors(checkpoints[key][1])
        assert metrics["sync/route"] == weight_sync.ROUTE_CODES["distributed"]
        assert metrics["sync/fallbacks"] == 0
        assert metrics["sync/bytes"] == sum(v.nbytes for v in want.values())
        assert metrics["sync/gb_per_s"] > 0 and metrics["sync/seconds"] > 0
        ranks = [(dumps[0], 0), (dumps[1], 0), (dumps[1], 1)]  # the tp=2 receiver holds 2
        for folder, r in ranks:
            _assert_same_bytes(_tensors(folder, f"rank{r}.safetensors"), want)
    assert two_receivers["versions"] == [["1", "1"], ["2", "2"]]
    # One test with the logits (not two): under pytest-xdist a second test could rebuild
    # the module fixture's receivers on another worker.
    _check_logits(two_receivers, checkpoints)


def _check_logits(two_receivers, checkpoints):
    """Receiver rank logits (a float32 copy of its bf16 weights) against the JAX model with
    the same bf16-rounded params, computed in float32."""
    params = checkpoints["A"][0]
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    model = nnx.merge(nnx.graphdef(Qwen3(MODEL_CFG, rngs=nnx.Rngs(0))), rounded)
    want = np.asarray(model(jnp.asarray(IDS, jnp.int32)))
    for folder in two_receivers["dumps"][1]:
        got = np.load(folder / "rank0_logits.npy")
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_refused_bucket_falls_back_to_disk_and_the_next_step_reforms(
    checkpoints, tmp_path, caplog
):
    rec = Receiver(checkpoints["A"][1], tmp_path, extra=["--reject-bucket=2"])
    try:
        with _engine([rec.url], tmp_path) as engine, caplog.at_level(logging.WARNING):
            m1 = engine.update_weights(checkpoints["B"][0], 1)
            warnings = [r for r in caplog.records if "falling back" in r.getMessage()]
            assert len(warnings) == 1 and "refused by the test" in warnings[0].getMessage()
            assert m1["sync/route"] == weight_sync.ROUTE_CODES["update_from_disk"]
            assert m1["sync/fallbacks"] == 1 and rec.version() == "1"
            _assert_same_bytes(
                _tensors(rec.dump(tmp_path / "d1"), "rank0.safetensors"),
                _tensors(checkpoints["B"][1]),
            )
            m2 = engine.update_weights(checkpoints["A"][0], 2)  # a new group this time
            assert m2["sync/route"] == weight_sync.ROUTE_CODES["distributed"]
            assert m2["sync/fallbacks"] == 1 and rec.version() == "2"
        _assert_same_bytes(
            _tensors(rec.dump(tmp_path / "d2"), "rank0.safetensors"),
            _tensors(checkpoints["A"][1]),
        )
    finally:
        rec.kill()


def test_a_relaunched_receiver_gets_a_new_group(checkpoints, tmp_path, caplog):
    rec = Receiver(checkpoints["A"][1], tmp_path)
    try:
        with _engine([rec.url], tmp_path) as engine, caplog.at_level(logging.WARNING):
            routes = [engine.update_weights(checkpoints["B"][0], 1)["sync/route"]]
            rec.kill()
            rec.start()  # same port, no group: the next push fails, falls back, re-forms
            routes.append(engine.update_weights(checkpoints["A"][0], 2)["sync/route"])
            model_b = Qwen3(
                MODEL_CFG, rngs=nnx.Rngs(1)
            )  # B as a model, which update_weights takes too
            routes.append(engine.update_weights(model_b, 3)["sync/route"])
        codes = weight_sync.ROUTE_CODES
        assert routes == [codes["distributed"], codes["update_from_disk"], codes["distributed"]]
        assert rec.version() == "3"
        _assert_same_bytes(
            _tensors(rec.dump(tmp_path / "d"), "rank0.safetensors"),
            _tensors(checkpoints["B"][1]),
        )
    finally:
        rec.kill()


def test_an_unreachable_master_address_times_out_and_falls_back(checkpoints, tmp_path, caplog):
    rec = Receiver(checkpoints["A"][1], tmp_path, extra=["--group-timeout-s=3"])
    try:
        cfg = dict(group_master_address="192.0.2.1", group_timeout_s=3)
        with _engine([rec.url], tmp_path, **cfg) as engine, caplog.at_level(logging.WARNING):
            m = engine.update_weights(checkpoints["B"][0], 1)
        warnings = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
        assert len(warnings) == 1 and "192.0.2.1" in warnings[0], warnings
        assert m["sync/route"] == weight_sync.ROUTE_CODES["update_from_disk"]
        assert rec.version() == "1"
    finally:
        rec.kill()


# ---------------------------------------------------------------- settings and bad input
def test_distributed_sync_needs_the_sglang_engine():
    with pytest.raises(ConfigError, match="rollout.sglang.sync 'distributed'.*rollout.engine"):
        RolloutConfig(engine="jax", sglang=SGLangConfig(sync="distributed"))


def test_main_with_distributed_sync_and_the_jax_engine_is_one_error_line(tmp_path):
    cmd = [sys.executable, "-m", "srpo_jax.main", "--config=configs/demo.py",
           "--config.rollout.sglang.sync=distributed", f"--workdir={tmp_path}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    run = subprocess.run(
        cmd, cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config.rollout.sglang.sync"), lines


def test_a_learner_without_torch_is_told_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(ConfigError, match=r"needs torch.*pip install -e '\.\[sync\]'"):
        weight_sync.require_torch()


def test_a_bucket_smaller_than_a_tensor_grows_to_fit_it():
    tensors = hf_tensors(_params(0), MODEL_CFG)
    sizes = [int(np.prod(t.shape)) * 2 for t in tensors]
    buckets = make_buckets(tensors, 2, max(sizes) // 4)
    assert [t for b in buckets for t in b.tensors] == tensors  # all, in save_hf_params' order
    for b in buckets:
        assert len(b.tensors) == 1 or b.nbytes <= max(sizes) // 4
    assert max(b.nbytes for b in buckets) == max(sizes)
    assert len(make_buckets(tensors, 2, sum(sizes))) == 1


def test_bf16_is_what_the_export_holds(checkpoints):
    assert all(v.dtype == ml_dtypes.bfloat16 for v in _tensors(checkpoints["B"][1]).values())


@pytest.mark.slow
def test_a_two_process_learner_sends_params_sharded_across_processes(checkpoints, tmp_path):
    """Two JAX processes (one CPU device each) hold params sharded over fsdp=2; both gather
    every bucket, process 0 broadcasts it; the receiver holds what save_hf_params writes
    from the same params."""
    rec = Receiver(checkpoints["A"][1], tmp_path)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(HERE.parents[1])
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = []
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                cmd = [sys.executable, str(WORKER), str(i), str(port), rec.url, str(tmp_path)]
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["spans_processes"]
        assert result["metrics"]["sync/route"] == weight_sync.ROUTE_CODES["distributed"]
        assert rec.version() == "1"
        _assert_same_bytes(
            _tensors(rec.dump(tmp_path / "d"), "rank0.safetensors"),
            _tensors(tmp_path / "reference"),
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        rec.kill()
