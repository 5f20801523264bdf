"""HF safetensors I/O: bit-exact round trips, sharded checkpoints, transformers reloads our
saves, bf16 export, and errors that name the bad tensor."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import hf_logits, make_hf_model, save
from safetensors import safe_open

from srpo_jax.model import load_hf, save_hf, save_hf_params

FP32 = {"dtype": "float32"}


@nnx.jit
def fwd(model, ids):
    return model(ids)


def _tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of an HF directory (single file or sharded), as numpy."""
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else None
    )
    out = {}
    for file in files or ["model.safetensors"]:
        with safe_open(path / file, "np") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (not iterable)
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_is_bit_exact_and_transformers_reloads(tmp_path, tie):
    hf = make_hf_model(tie=tie)
    src = tmp_path / "src"
    save(hf, src)
    model = load_hf(src, config_overrides=FP32)
    dst = tmp_path / "dst"
    save_hf(model, dst)
    a, b = _tensors(src), _tensors(dst)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    config = json.loads((dst / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 10000.0
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["tie_word_embeddings"] == tie
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        dst, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = np.random.RandomState(0).randint(0, 160, (2, 8))
    np.testing.assert_array_equal(hf_logits(reloaded, ids), hf_logits(hf, ids))


def test_sharded_checkpoint_loads(tmp_path):
    hf = make_hf_model(layers=3)
    src = save(hf, tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "src").glob("model-*.safetensors"))) > 2
    model = load_hf(src, config_overrides=FP32)
    ids = np.random.RandomState(1).randint(0, 160, (1, 9))
    np.testing.assert_allclose(
        np.asarray(fwd(model, jnp.asarray(ids))), hf_logits(hf, ids), rtol=1e-4, atol=1e-4
    )


def test_save_in_shards_with_bf16_export(tmp_path):
    hf = make_hf_model()
    model = load_hf(save(hf, tmp_path / "src"), config_overrides=FP32)
    dst = tmp_path / "bf16"
    save_hf_params(nnx.state(model, nnx.Param), model.config, dst, max_shard_bytes=20_000)
    assert len(list(dst.glob("model-*-of-*.safetensors"))) > 2
    saved = _tensors(dst)
    ref = {k: v.detach().numpy() for k, v in hf.state_dict().items() if k in saved}
    assert set(saved) == set(ref)
    for name, value in saved.items():
        assert value.dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(value, ref[name].astype(ml_dtypes.bfloat16), err_msg=name)
    config = json.loads((dst / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    # Saving again into the same folder as a single file removes the old shards.
    save_hf(model, dst)
    assert sorted(p.name for p in dst.glob("model*")) == [
        "model.safetensors",
        "model.safetensors.index.json",
    ]


def test_bf16_checkpoint_loads_into_fp32_params(tmp_path):
    hf = make_hf_model().to(torch.bfloat16)
    model = load_hf(save(hf, tmp_path / "src"))
    assert model.embed[...].dtype == jnp.float32
    ref = hf.model.layers[1].self_attn.o_proj.weight.detach().float().numpy()  # [D, N*H]
    ours = np.asarray(model.layers.o_proj[...][1]).reshape(-1, ref.shape[0]).T
    np.testing.assert_array_equal(ours, ref)


def test_load_onto_mesh_places_shards_by_the_rules(tmp_path):
    from srpo_jax.sharding import MeshConfig, make_mesh

    hf = make_hf_model()
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model = load_hf(save(hf, tmp_path / "src"), config_overrides=FP32, mesh=mesh)
    q = model.layers.q_proj[...]
    assert tuple(q.sharding.spec) == (None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 16, 2, 16)
    ref = hf.model.layers[0].self_attn.q_proj.weight.detach().numpy().T.reshape(64, 4, 16)
    np.testing.assert_array_equal(np.asarray(q[0]), ref)
    ids = np.random.RandomState(2).randint(0, 160, (2, 6))
    np.testing.assert_allclose(
        np.asarray(fwd(model, jnp.asarray(ids))), hf_logits(hf, ids), rtol=1e-4, atol=1e-4
    )


def test_missing_tensor_error_names_it(tmp_path):
    hf = make_hf_model(layers=2)
    state = {k: v for k, v in hf.state_dict().items() if k != "model.layers.1.mlp.up_proj.weight"}
    hf.save_pretrained(tmp_path / "ckpt", state_dict=state)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(tmp_path / "ckpt")


def test_wrong_shape_error_names_tensor_file_and_shapes(tmp_path):
    from safetensors.numpy import save_file

    hf = make_hf_model()
    path = tmp_path / "ckpt"
    save(hf, path)
    tensors = _tensors(path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        load_hf(path)
    msg = str(err.value)
    assert "model.layers.0.self_attn.k_proj.weight" in msg and "model.safetensors" in msg
    assert "(16, 64)" in msg and "(32, 64)" in msg
