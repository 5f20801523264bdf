"""Bad input as a user meets it: every case of the table in tests/e2e/bad_input_cases.py.

Each case gives one entry point (`python -m srpo_jax.main` unless the case names another)
one bad input: a path, a file's bytes or a setting. It must end with its exit code (2) and
exactly one `error:` line on stderr, the last one, equal to the case's message (paths under
the case's folder shown as …), with no traceback from anyone and the workdir as it was.
How each case runs (in this interpreter, in the shared one-device worker, or as its own
process) is the case's `run` field, see tests/e2e/bad_input_table.py; docs/troubleshooting.md's
table is generated from the same records.

Documented per-row outcomes that are not errors (a filtered prompt, an empty completion, a
broken tool call) are tested below the table. Unit-level checks of the same errors live
beside their modules (test_config, data/test_datasets, data/test_rewards, test_checkpoint,
model/test_hf_io).
"""

import concurrent.futures
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the table modules beside

import bad_input_table as table  # noqa: E402
from bad_input_cases import CASES, MIXED_ROWS  # noqa: E402

from srpo_jax.config import check_mesh, from_config_dict, load_config_module  # noqa: E402
from srpo_jax.data import datasets, rewards  # noqa: E402
from srpo_jax.data import tokenizer as tok_lib  # noqa: E402
from srpo_jax.learner import batch as batching  # noqa: E402
from srpo_jax.model import save_hf  # noqa: E402
from srpo_jax.model.qwen3 import create_sharded_model  # noqa: E402
from srpo_jax.sharding import MeshConfig, make_mesh  # noqa: E402

REPO_ROOT = table.REPO_ROOT
BY_NAME = {c.name: c for c in CASES}
PROCESS_TIMEOUT_S = 400  # the backend cases import the trainer; CI machines may be loaded


def demo_config_dict() -> dict:
    return load_config_module(str(REPO_ROOT / "configs" / "demo.py"), "demo.py").get_config()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> table.Inputs:
    """Good inputs: the demo model as an HF dir (tokenizer included), the tokenizer, and a
    chem data dir whose train prompts straddle max_prompt_len=70 (the filter case)."""
    root = tmp_path_factory.mktemp("good")
    tok = tok_lib.build_tiny_tokenizer(root / "tok")
    hf = root / "hf"
    arch = from_config_dict(demo_config_dict()).model.architecture()
    save_hf(create_sharded_model(arch, make_mesh(MeshConfig(), jax.devices()[:1]), seed=0), hf)
    shutil.copytree(tok, hf, dirs_exist_ok=True)
    data = root / "data"
    for split, rows in MIXED_ROWS.items():
        path = datasets.split_path(data, "chem", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return table.Inputs(hf=hf, tok=tok, data=data)


def _snapshot(wd: pathlib.Path) -> dict | None:
    if not wd.exists():
        return None
    return {str(p.relative_to(wd)): p.stat().st_size for p in sorted(wd.rglob("*"))}


def _process(case: table.Case, argv: list[str]) -> table.Outcome:
    proc = subprocess.run(
        [sys.executable, "-m", case.entry, *argv],
        cwd=REPO_ROOT,
        env=table.worker_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
    )
    return table.Outcome(proc.returncode, proc.stdout, proc.stderr)


def _worker(spec: list, root: pathlib.Path) -> dict[str, table.Outcome]:
    if not spec:
        return {}
    spec_file, out = root / "worker.json", root / "worker_out.json"
    spec_file.write_text(json.dumps({"cases": spec, "out": str(out)}))
    script = pathlib.Path(table.__file__)
    proc = subprocess.run(
        [sys.executable, str(script), str(spec_file)],
        cwd=REPO_ROOT,
        env=table.worker_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S * 2,
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return {k: table.Outcome(**v) for k, v in json.loads(out.read_text()).items()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, inputs):
    """(outcome, workdir before, workdir after, case dir) of every case. The worker and the
    process cases run in the background while this interpreter runs the in-process ones."""
    root = tmp_path_factory.mktemp("cases")
    argv, before = {}, {}
    for case in CASES:
        case_dir = root / case.name
        case_dir.mkdir()
        if case.setup is not None:
            case.setup(case_dir, inputs)
        argv[case.name] = case.argv(case_dir, inputs)
        before[case.name] = _snapshot(case_dir / "wd")
    worker_spec = [[c.name, c.entry, argv[c.name]] for c in CASES if c.run == "backend"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        worker = pool.submit(_worker, worker_spec, root)
        procs = {
            c.name: pool.submit(_process, c, argv[c.name]) for c in CASES if c.run == "process"
        }
        results = {
            c.name: table.call_entry(c.entry, argv[c.name]) for c in CASES if c.run == "inproc"
        }
        results |= {name: f.result() for name, f in procs.items()} | worker.result()
    return {
        c.name: (results[c.name], before[c.name], _snapshot(root / c.name / "wd"), root / c.name)
        for c in CASES
    }


def _shown(text: str, case_dir: pathlib.Path, inputs: table.Inputs) -> str:
    """Paths as the table shows them: … for the case's folder and the good inputs' root."""
    text = text.replace(str(case_dir), "…").replace(str(inputs.hf.parent), "…")
    return text.replace(str(REPO_ROOT) + "/", "")


@pytest.mark.parametrize("name", list(BY_NAME))
def test_bad_input(outcomes, inputs, name):
    case = BY_NAME[name]
    outcome, before, after, case_dir = outcomes[name]
    stderr = _shown(outcome.stderr, case_dir, inputs)
    assert "Traceback" not in stderr, stderr[-4000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr[-4000:]
    assert stderr.strip().splitlines()[-1] == errors[0], stderr[-4000:]
    assert errors[0] == f"error: {case.error}", errors[0]
    assert outcome.code == case.exit_code, stderr[-4000:]
    if case.exit_code == 2:
        assert after == before, "the workdir changed"


@pytest.mark.parametrize("name", ["mesh_tensor", "mesh_devices"])
def test_mesh_hint_applied_passes_validation(outcomes, name):
    """The hint's suggested setting, applied to the same command, is a valid config on the
    same one-device process."""
    line = outcomes[name][0].stderr.strip().splitlines()[-1]
    match = re.search(r"e\.g\. --config\.mesh\.(\w+)=(\d+)", line)
    assert match, line
    d = demo_config_dict()
    for arg in BY_NAME[name].args[1:]:
        key, value = arg[len("--config.") :].split("=")
        section, field = key.split(".")
        d[section][field] = int(value)
    d["mesh"][match[1]] = int(match[2])
    check_mesh(from_config_dict(d), 1)


def test_troubleshooting_page_is_generated():
    """docs/troubleshooting.md's case table is render_table(CASES): regenerate it with
    `python tests/e2e/bad_input_table.py --write-page`."""
    page = table.PAGE.read_text()
    assert table.BEGIN in page and table.END in page
    assert page == table.page_with_table(page, CASES)


def test_enough_cases_over_every_entry():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {"srpo_jax.main", "srpo_jax.compare.run", "srpo_jax.plan"} <= {c.entry for c in CASES}
    assert {"inproc", "backend", "process"} == {c.run for c in CASES}


@pytest.mark.slow
def test_prompt_longer_than_limit_is_filtered_and_counted(outcomes, inputs):
    """Not an error: the hf_missing_tensor run reads the mixed chem split with
    max_prompt_len 70, and its start-up line counts the dropped prompts."""
    tok = tok_lib.load_tokenizer(inputs.tok)
    train = [datasets.Example(**r) for r in MIXED_ROWS["train"]]
    too_long = sum(len(datasets.encode_prompt(tok, datasets.messages(ex))) > 70 for ex in train)
    assert 0 < too_long < len(train)  # the case needs some, not all, prompts over the limit
    out = outcomes["hf_missing_tensor"][0].stdout
    assert f"{len(train) - too_long} train prompts ({too_long} filtered as too long)" in out, out


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
