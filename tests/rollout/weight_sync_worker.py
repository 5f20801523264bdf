"""One process of a 2-process learner (each with one CPU device, joined on 127.0.0.1) that
pushes params sharded across both processes to a receiver with sync="distributed".

Run as `python weight_sync_worker.py PROCESS_ID COORDINATOR_PORT RECEIVER_URL OUT_DIR`.
Both processes gather every bucket; process 0 alone broadcasts. Process 0 writes the
metrics of the push (and whether a parameter really spanned both processes) to
OUT_DIR/result.json, and both then export the same params with save_hf_params to
OUT_DIR/reference (the bytes the receiver must hold).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys


def main(process_id: int, port: int, url: str, out_dir: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
        initialization_timeout=120,
    )  # fmt: skip
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from srpo_jax.model import Qwen3, save_hf_params, tiny
    from srpo_jax.rollout.config import SGLangConfig
    from srpo_jax.rollout.sglang import engine_from_config
    from srpo_jax.sharding import MeshConfig, make_mesh, param_shardings

    model_cfg = tiny(vocab_size=160)
    host = nnx.state(Qwen3(model_cfg, rngs=nnx.Rngs(1)), nnx.Param)
    mesh = make_mesh(MeshConfig(fsdp=2))
    shardings = param_shardings(mesh, host)

    def place(var, sharding):
        value = np.asarray(var.get_value())
        array = jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])
        return var.replace(array)

    params = jax.tree.map(place, host, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    spans = any(not v.get_value().is_fully_addressable for v in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)))  # fmt: skip
    out = pathlib.Path(out_dir)
    cfg = SGLangConfig(
        urls=(url,), sync="distributed", group_backend="gloo", bucket_mb=0.01,
        group_timeout_s=30, timeout_s=60, max_retries=0, export_dir=str(out / "exports"),
    )  # fmt: skip
    engine = engine_from_config(cfg, model_cfg, params, version=0)
    metrics = engine.update_weights(params, 1)
    # The reference: what the disk route writes from the same sharded params.
    save_hf_params(params, model_cfg, out / "reference", dtype="bfloat16")
    if process_id == 0:
        result = {"metrics": metrics, "spans_processes": spans}
        (out / "result.json").write_text(json.dumps(result))
    engine.close()
    multihost_utils.sync_global_devices("done")
    sys.stdout.flush()
    os._exit(0)  # skip the final garbage collection, where CPU gloo can hang (test_multihost)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
