"""Bad input as a user meets it: one test per row of docs/troubleshooting.md.

Each case must end in a clear error naming the bad thing (exit code 2 and no traceback
from `python -m srpo_jax.main`) or in a documented per-row outcome (a filtered prompt, a
zero reward). Unit-level checks of the same errors live beside their modules (test_config,
test_main, data/test_datasets, data/test_rewards, test_checkpoint, model/test_hf_io); this
file goes through the entry points a user hits and checks only what those leave out.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from srpo_jax.config import from_config_dict, load_config_module
from srpo_jax.data import datasets, rewards
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.learner import batch as batching
from srpo_jax.model import hf_io, save_hf
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh
from srpo_jax.trainer import checkpoint

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = "--config=configs/demo.py"
MISSING_TENSOR = "model.layers.1.mlp.up_proj.weight"
ROW = {"idx": 1, "kind": "mcq", "dataset": "d", "prompt": "Q?", "system": None, "answer": "A"}


def run_main(*args: str) -> subprocess.CompletedProcess:
    # One CPU device, as in a plain run: the mesh check must see that count.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "srpo_jax.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,  # the heavy cases import the trainer; the test machine may be loaded
    )


def run_all(cases: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Every case in its own interpreter, all at once (interpreter start-up dominates)."""
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(run_main, *args) for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def config_runs(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("config_wd"))
    cases = {
        "unknown_key": [DEMO, "--config.train.num_step=5"],
        "wrong_type_bool": [DEMO, "--config.algo.add_tail=3"],
        "wrong_type_int": [DEMO, "--config.algo.group_size=2.5"],
        "mini_batch": [DEMO, "--config.train.mini_batch_prompts=3"],
        "mesh_rows": [DEMO, "--config.mesh.fsdp=3"],
        "mesh_devices": [DEMO, "--config.mesh.fsdp=2"],
        "pack_budget": [DEMO, "--config.train.packed=true", "--config.train.micro_batch_tokens=64"],
        "pack_len": [DEMO, "--config.train.packed=true", "--config.train.pack_len=128"],
    }
    return run_all({k: [*v, f"--workdir={wd}"] for k, v in cases.items()}), wd


def test_config_unknown_key(config_runs):
    runs, _ = config_runs
    assert_clean_error(
        runs["unknown_key"],
        "unknown config key config.train.num_step",
        "did you mean config.train.num_steps",
    )


def test_config_wrong_type(config_runs):
    runs, _ = config_runs
    assert_clean_error(runs["wrong_type_bool"], "--config.algo.add_tail=3", "Non-boolean argument")
    assert_clean_error(runs["wrong_type_int"], "--config.algo.group_size=2.5", "'2.5'")


def test_config_mini_batch_not_dividing(config_runs):
    runs, _ = config_runs
    assert_clean_error(
        runs["mini_batch"],
        "config.train.mini_batch_prompts must divide config.train.prompts_per_step (16), got 3",
    )


def test_config_packing_budget_and_row_length(config_runs):
    runs, _ = config_runs
    assert_clean_error(
        runs["pack_budget"],
        "config.train.micro_batch_tokens = 64 is less than config.train.pack_len = 272",
    )
    assert_clean_error(
        runs["pack_len"],
        "config.data.max_prompt_len + config.data.max_response_len = 144 is longer than "
        "config.train.pack_len = 128",
    )


def test_config_mesh_mismatch(config_runs):
    runs, wd = config_runs
    # fsdp=3 cannot split the demo's 128 rows per micro-batch: refused while validating.
    assert_clean_error(runs["mesh_rows"], "divisible by mesh.data * mesh.fsdp = 3")
    # fsdp=2 is a valid layout, but this process has one device: refused at start-up.
    assert_clean_error(
        runs["mesh_devices"],
        "config.mesh data*fsdp*tensor = 1*2*1 = 2 must equal the number of devices (1)",
        "--config.mesh.fsdp=1",
    )
    assert not any(pathlib.Path(wd).iterdir())  # nothing written before the error


# ----------------------------------------------------------------------------- data


def _write_split(data_dir: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path = data_dir / "sciknoweval" / "chemistry" / "train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps(ROW)
# A chem split whose prompts straddle max_prompt_len=70 (the filter case): short questions
# and ones of some 200 words.
MIXED_ROWS = {
    "train": [dict(ROW, idx=i, prompt="Q?" if i % 2 else "word " * 200) for i in range(5)],
    "test": [dict(ROW, idx=i, prompt="Q?") for i in range(2)],
}
DATA_CASES = {
    "malformed_line": ([GOOD, '{"idx": 2, "kind":'], r"train\.json:2: malformed JSON"),
    "missing_field": (
        [GOOD, json.dumps({k: v for k, v in ROW.items() if k != "prompt"})],
        r"train\.json:2: missing field\(s\) \['prompt'\]",
    ),
    "unknown_kind": ([json.dumps(dict(ROW, kind="essay"))], r"train\.json:1: unknown kind 'essay'"),
    "empty_split": (["", "   "], r"train\.json: empty split"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_file_errors_are_data_errors(tmp_path, case):
    """The loader a run uses (load_split) raises DataError, which main prints as one line."""
    lines, message = DATA_CASES[case]
    _write_split(tmp_path, lines)
    with pytest.raises(datasets.DataError, match=message):
        datasets.load_split(tmp_path, "chem", "train")


def test_missing_split_file_is_a_data_error(tmp_path):
    # The one split missing everywhere: a folder lacking a shipped split reads the package's.
    with pytest.raises(datasets.DataError, match=r"tooluse/train\.json") as err:
        datasets.load_split(tmp_path, "tooluse", "train")
    assert isinstance(err.value, FileNotFoundError)


# ----------------------------------------------------------------------------- rewards


TOOL_GT = json.dumps(
    [{"Action": "getWeather", "Action_Input": json.dumps({"city": "Zurich", "opts": {"u": "C"}})}]
)
FLAT_GT = json.dumps([{"Action": "getWeather", "Action_Input": json.dumps({"city": "Zurich"})}])


def test_empty_completion_scores_zero():
    assert rewards.reward("mcq", "", "A") == 0.0
    assert rewards.reward("tooluse", "", FLAT_GT) == 0.0
    assert rewards.answer_key("mcq", "") is None and rewards.answer_key("tooluse", "") is None


def test_empty_completion_packs_to_an_all_zero_mask():
    b = 4
    responses = [[5, 6, 7], [], [8], [9, 10]]
    rows = batching.StepRows.from_lists(
        prompt_ids=[[1, 2, 3]] * b,
        response_ids=responses,
        rollout_logprobs=[[-0.5] * len(r) for r in responses],
        advantages=np.array([1.0, -1.0, 0.5, -0.5]),
        sdpo_rows=np.zeros(b, bool),
        teacher_rows=np.zeros(b, bool),
        teacher_prompt_ids={},
    )
    batch = batching.build_train_batch(rows, num_minibatches=1, micro_batch_rows=b, pad_id=0)
    mask = batch.response_mask_BR[0, 0]
    assert mask.shape[-1] >= 1 and not mask[1].any()
    np.testing.assert_array_equal(mask.sum(-1), [3, 0, 1, 2])
    p_len = batch.input_ids_BS.shape[-1] - mask.shape[-1]
    assert not batch.attention_mask_BS[0, 0, 1, p_len:].any()  # no response token attends
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(batch) if v.dtype.kind == "f")


@pytest.mark.parametrize(
    "response",
    [
        'Action: getWeather\nAction Input: {"city": "Zurich", "opts": {"u": "C"}}',  # nested
        'Action: getWeather\nAction Input: {"city": "Zurich",}',  # trailing comma
        'Action: getWeather\nAction Input: {"city": "Zurich"',  # never closed
        "Action: getWeather\nAction Input: {'city': 'Zurich'}",  # Python, not JSON
        "Action: getWeather\nAction Input: " + '{"a": ' * 5000 + "1" + "}" * 5000,  # deep
        'Action: getWeather\nAction Input: ["city", "Zurich"]',  # not an object
    ],
)
def test_broken_or_nested_tool_json_scores_zero(response):
    # A nested ground truth can never be matched (the SPEC regex stops at the first '}').
    assert rewards.tooluse_reward(response, TOOL_GT) == 0.0
    assert rewards.tooluse_reward(response, FLAT_GT) == 0.0


# ----------------------------------------------------------------------------- heavy runs


def _demo_config(**model_overrides):
    """configs/demo.py resolved, with some Qwen3Config fields overridden."""
    d = load_config_module(str(REPO_ROOT / "configs" / "demo.py"), "demo.py").get_config()
    d = d.to_dict()
    d["model"]["overrides"].update(model_overrides)
    return from_config_dict(d)


def _drop_tensor(hf_dir: pathlib.Path, name: str) -> None:
    with safe_open(hf_dir / "model.safetensors", "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != name}  # noqa: SIM118
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    index = json.loads((hf_dir / hf_io.INDEX_FILE).read_text())
    del index["weight_map"][name]
    (hf_dir / hf_io.INDEX_FILE).write_text(json.dumps(index))


@pytest.fixture(scope="module")
def tiny_tok_dir(tmp_path_factory):
    return tok_lib.build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tok_dir):
    """The demo model as an HF directory, with the tokenizer (tokenizer.path = hf_path)."""
    path = tmp_path_factory.mktemp("hf")
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    save_hf(create_sharded_model(_demo_config().model.architecture(), mesh, seed=0), path)
    shutil.copytree(tiny_tok_dir, path, dirs_exist_ok=True)
    return path


@pytest.fixture(scope="module")
def heavy_runs(tmp_path_factory, tiny_tok_dir, hf_dir):
    """Runs of the demo that fail at start-up, after the trainer has begun loading things."""
    from srpo_jax.learner import train_step as learner

    root = tmp_path_factory.mktemp("heavy")
    missing = root / "hf_missing"
    shutil.copytree(hf_dir, missing)
    _drop_tensor(missing, MISSING_TENSOR)
    data_dir = root / "data"
    _write_split(data_dir, [GOOD, '{"idx": 2, "kind":'])
    # A demo run's checkpoint, but of a model with hidden_size 32 instead of 64.
    narrow = _demo_config(hidden_size=32)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    _, params = nnx.split(
        create_sharded_model(narrow.model.architecture(), mesh, seed=0), nnx.Param
    )
    state = learner.init_state(params, learner.StepSettings.from_config(narrow), mesh)
    manager = checkpoint.CheckpointManager(root / "wd_ckpt" / "checkpoints", async_save=False)
    manager.save(1, state, {"weight_version": 1})
    manager.close()

    # Every synthetic prompt has one length, so the filter case reads a chem split of mixed
    # lengths: max_prompt_len 70 keeps the short rows (all test rows) and drops the long ones.
    mixed_dir = root / "mixed"
    for split, rows in MIXED_ROWS.items():
        path = datasets.split_path(mixed_dir, "chem", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cases = {
        "data": [DEMO, "--config.data.task=chem", f"--config.data.data_dir={data_dir}"],
        "hf": [DEMO, "--config.model.preset=", f"--config.model.hf_path={missing}"]
        + ["--config.data.task=chem", f"--config.data.data_dir={mixed_dir}"]
        + ["--config.data.max_prompt_len=70"],
        "ckpt": [DEMO],
    }
    for name in cases:  # the demo's tokenizer, prebuilt (building it takes seconds)
        shutil.copytree(tiny_tok_dir, root / f"wd_{name}" / "tokenizer", dirs_exist_ok=True)
    return run_all({k: [*v, f"--workdir={root / f'wd_{k}'}"] for k, v in cases.items()})


@pytest.mark.slow
def test_main_data_file_with_malformed_line(heavy_runs):
    assert_clean_error(heavy_runs["data"], "chemistry/train.json:2: malformed JSON")


@pytest.mark.slow
def test_main_prompt_longer_than_limit_is_filtered_and_counted(heavy_runs, tiny_tok_dir):
    tok = tok_lib.load_tokenizer(tiny_tok_dir)
    train = [datasets.Example(**r) for r in MIXED_ROWS["train"]]
    too_long = sum(len(datasets.encode_prompt(tok, datasets.messages(ex))) > 70 for ex in train)
    assert 0 < too_long < len(train)  # the case needs some, not all, prompts over the limit
    out = heavy_runs["hf"].stdout
    assert f"{len(train) - too_long} train prompts ({too_long} filtered as too long)" in out, out


@pytest.mark.slow
def test_main_hf_dir_with_missing_tensor(heavy_runs):
    assert_clean_error(heavy_runs["hf"], f"checkpoint tensor '{MISSING_TENSOR}' is missing")


def test_hf_dir_with_wrong_shape_names_the_tensor(hf_dir, tmp_path):
    bad = tmp_path / "hf_bad"
    shutil.copytree(hf_dir, bad)
    name = "model.layers.0.self_attn.k_proj.weight"
    with safe_open(bad / "model.safetensors", "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    expected = tensors[name].shape
    tensors[name] = np.zeros((expected[0] + 8, expected[1]), np.float32)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf_io.HFCheckpointError) as err:  # main prints it as one line
        hf_io.load_hf(bad)
    msg = str(err.value)
    assert name in msg and str(expected) in msg and str(tensors[name].shape) in msg


@pytest.mark.slow
def test_main_checkpoint_of_a_different_model_shape(heavy_runs):
    proc = heavy_runs["ckpt"]
    assert_clean_error(proc, "does not match the train state (different model shape?)")
    # The embedding's leaf, with both shapes: (vocab 512, hidden 32) saved vs 64 expected.
    msg = proc.stderr.strip().splitlines()[-1]
    assert "params/embed" in msg and "(512, 32)" in msg and "(512, 64)" in msg, msg


@pytest.mark.slow
def test_learner_step_on_empty_completions_stays_finite():
    """One mixed batch (a single empty completion) and one where every completion is empty
    (zero loss tokens): both steps give finite metrics and finite new params."""
    from srpo_jax.learner import train_step as learner
    from srpo_jax.model import tiny

    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    model = create_sharded_model(
        tiny(vocab_size=97, hidden_size=32, intermediate_size=64, head_dim=8), mesh, seed=0
    )
    graphdef, params = nnx.split(model, nnx.Param)
    cfg = learner.StepSettings.of(method="srpo", topk=10, lr=1e-3, warmup_steps=0, chunk_size=16)
    state = learner.init_state(params, cfg, mesh)
    lrn = learner.Learner(cfg, graphdef, mesh)
    b = 4
    for responses in ([[5, 6, 7], [], [8], [9, 10]], [[]] * b):
        rows = batching.StepRows.from_lists(
            prompt_ids=[[1, 2, 3]] * b,
            response_ids=responses,
            rollout_logprobs=[[-0.5] * len(r) for r in responses],
            advantages=np.array([1.0, -1.0, 1.0, -1.0]),
            sdpo_rows=np.zeros(b, bool),
            teacher_rows=np.zeros(b, bool),
            teacher_prompt_ids={},
        )
        batch = batching.build_train_batch(rows, num_minibatches=1, micro_batch_rows=b, pad_id=0)
        state, metrics = lrn.train_step(state, batch)
        metrics = jax.device_get(metrics)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
        bad = {k: v for k, v in metrics.items() if not np.all(np.isfinite(v))}
        assert not bad, (responses, bad)
