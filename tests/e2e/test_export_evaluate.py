"""`srpo_jax.export` and `srpo_jax.evaluate` on a trained demo run, and the README's real-run
commands run as written.

One module-scoped run makes everything: the README's real-run block (between its
`<!-- real-run -->` markers) is read, and each command runs at CPU demo scale, with the
placeholders swapped (the benchmark config for configs/demo.py with small overrides, the
Qwen3-8B directory for a copy of the session's warm checkpoint: the demo model after its
supervised warm-up, with the demo's tokenizer (tests/e2e/conftest.py); runs/chem for a
temporary folder) and a few flags appended (a later absl flag wins): the ToolUse fetch from a
local HTTP server; the run, 2 steps; the resume (the same command, num_steps=4); then the HF
directory is deleted, so that export and evaluate read the workdir alone; the export
(--dtype=float32, so the logits compare in fp32); the evaluation (--k=4, the run's own k).

Checks: transformers loads the export and its logits equal the JAX model built from the
checkpoint's arrays (read with orbax alone) within 1e-4; the teacher export equals the
checkpoint's EMA tree bit for bit; the evaluation of a checkpoint gives exactly the avg@k
(nonzero: the run warms up, so some samples are right), maj@k and mean response length the
run logged at that step, and an HF directory (the
export) evaluates with --config and --hf_path; the SLURM command is the
script tests/e2e/test_slurm.py runs, and its options pass the script's dry run. Their bad
input is in the table of tests/e2e/bad_input_cases.py.
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np

from srpo_jax.trainer.metrics import read_metrics
from tests.data.test_fetch import GOOD_BLOB, server  # noqa: F401
from tests.e2e.test_resume import TINY, final_state
from tests.e2e.test_slurm import SLURM

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = "<!-- real-run -->"
STEPS = ("data", "run", "resume", "export", "evaluate", "slurm")
# The demo at the scale of tests/e2e/test_resume.py, with evaluation (k=4 of 8 questions) and
# a checkpoint every 2 steps, from the warm checkpoint. Its warm-up taught the answer format,
# so a sample is right when it guesses both code letters (1 in 16): the run's evaluation has
# right samples, and which samples are right depends on every draw, so an equal nonzero
# avg@k tells two samplers apart (without the warm-up both scored 0). The tiny learning rate
# keeps the RL steps from moving the warmed-up model far.
DEMO = TINY + [
    "--config.model.preset=",
    "--config.warmup.steps=0",
    "--config.eval.every_steps=2",
    "--config.eval.num_samples=4",
    "--config.eval.max_examples=8",
    "--config.checkpoint.every_steps=2",
    "--config.optim.lr=1e-5",
]


def readme_commands() -> dict[str, list[str]]:
    """{step: argv} of the README's real-run block: a `# step: ...` comment, then its command."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split(MARKER)[1]
    commands, label = {}, None
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("# "):
            label = line[2:].split(":")[0]
        elif line and not line.startswith("```") and label is not None:
            commands[label] = shlex.split(line)
            label = None
    assert tuple(commands) == STEPS, commands
    return commands


def _demo_scale(argv: list[str], paths: dict[str, str]) -> list[str]:
    """A documented command with the demo's config, a tiny HF model and temporary paths."""
    out = []
    for arg in argv:
        if arg.startswith("--config=configs/"):
            out += ["--config=configs/demo.py:method=srpo", *DEMO[1:]]
            continue
        for placeholder, path in paths.items():
            arg = arg.replace(placeholder, path)
        out.append(arg)
    return out


def _env() -> dict[str, str]:
    # One CPU device, as the run had: evaluate must sample on the run's mesh. No proxy may
    # answer the fetch's requests to the local server.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return env | {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def cli(argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """A documented `python -m ...` command, run with this interpreter."""
    assert argv[:2] == ["python", "-m"], argv
    argv = [sys.executable, *argv[1:]]
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def _real_run(root: pathlib.Path, url: str, warm: pathlib.Path) -> dict:
    """The README's commands up to the evaluation, run in order at demo scale."""
    hf = shutil.copytree(warm, root / "Qwen3-8B")  # deleted below
    paths = {"/ckpt/Qwen3-8B": str(hf), "runs/chem": str(root / "chem")}
    raw = readme_commands()
    docs = {k: _demo_scale(v, paths) for k, v in raw.items()}
    docs["slurm"] = raw["slurm"]  # its own paths: only its dry run runs here
    data = root / "data"
    fetched = _ok(cli([*docs["data"], f"--out={data}", f"--base_url={url}/good",
                       f"--expected_blob={GOOD_BLOB}"]))  # fmt: skip
    _ok(cli([*docs["run"], "--config.train.num_steps=2"]))
    resumed = _ok(cli([*docs["resume"], "--config.train.num_steps=4"]))
    shutil.rmtree(hf)  # export and evaluate need the workdir alone
    _ok(cli([*docs["export"], "--dtype=float32"]))
    evaluated = _ok(cli([*docs["evaluate"], "--k=4"]))
    return {
        "docs": docs,
        "data": data,
        "fetched": fetched,
        "resumed": resumed,
        "evaluated": evaluated,
        "workdir": root / "chem",
        "export": root / "chem" / "hf",
        "eval": root / "chem" / "eval",
        "root": root,
    }


def _check_data_run_and_resume(real_run):
    assert (real_run["data"] / "tooluse" / "train.json").is_file()
    assert "resumed from checkpoint step 2" in real_run["resumed"].stdout
    steps = [r["step"] for r in read_metrics(real_run["workdir"] / "metrics.jsonl")]
    assert sorted(set(steps)) == [0, 1, 2, 3, 4]


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'a/b/value': leaf} of a nested pure dict {'a': {'b': leaf}}, in the checkpoint's names."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}/value"] = np.asarray(value)
    return out


def _unflat(names: dict[str, np.ndarray], prefix: str) -> dict:
    """The nested pure dict of the checkpoint arrays under /prefix/ (the '/value' dropped)."""
    out: dict = {}
    for name, value in names.items():
        if not name.startswith(f"/{prefix}/"):
            continue
        *parents, last, _ = name[len(prefix) + 2 :].split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _jax_logits(workdir: pathlib.Path, step: int, ids_BT: np.ndarray) -> np.ndarray:
    """The policy of checkpoint `step`, read with orbax alone, as a JAX Qwen3's logits."""
    from flax import nnx

    from srpo_jax.export.workdir import RunDir
    from srpo_jax.model.qwen3 import Qwen3

    _, arrays = final_state(workdir, step)
    model = Qwen3(RunDir.open(workdir).architecture(), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, _unflat(arrays, "params"))
    nnx.update(model, params)
    return np.asarray(model(ids_BT))


def _check_export_logits(real_run):
    import torch
    import transformers

    export = real_run["export"]
    record = json.loads((export / "srpo_export.json").read_text())
    assert record["which"] == "policy" and record["dtype"] == "float32"
    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    ids_BT = np.asarray([tokenizer.encode("Codes of owl and fox? <answer> owl B")] * 2)
    ids_BT[1, :3] = [5, 6, 7]  # two different rows
    with torch.no_grad():
        hf_BTV = model(torch.as_tensor(ids_BT)).logits.numpy()
    jax_BTV = _jax_logits(real_run["workdir"], record["step"], ids_BT)
    np.testing.assert_allclose(hf_BTV, jax_BTV, atol=1e-4, rtol=1e-4)


def _check_teacher_export(real_run):
    from flax import nnx

    from srpo_jax.model import hf_io

    out = real_run["root"] / "teacher"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier export")  # replaced whole with --force
    workdir = real_run["workdir"]
    argv = ["python", "-m", "srpo_jax.export", f"--workdir={workdir}", f"--out={out}",
            "--step=2", "--which=teacher", "--dtype=float32", "--force"]  # fmt: skip
    _ok(cli(argv))
    assert not (out / "stale.txt").exists()
    _, arrays = final_state(real_run["workdir"], 2)
    loaded = _flat(nnx.to_pure_dict(nnx.state(hf_io.load_hf(out), nnx.Param)))
    assert set(loaded) == {k[len("/teacher/") :] for k in arrays if k.startswith("/teacher/")}
    differs_from_policy = False
    for key, value in loaded.items():
        np.testing.assert_array_equal(value, arrays["/teacher/" + key], strict=True)
        differs_from_policy |= not np.array_equal(value, arrays["/params/" + key])
    assert differs_from_policy  # the teacher tree, not the policy's


def _check_evaluation(real_run):
    report = json.loads((real_run["eval"] / "evaluation.json").read_text())
    step = report["model"]["step"]
    logged = [
        r for r in read_metrics(real_run["workdir"] / "metrics.jsonl")
        if r["step"] == step and "eval/avg_at_k" in r
    ][-1]  # fmt: skip
    for name in ("synthetic", "overall"):
        got = report["results"][name]
        assert got["avg_at_k"] == logged["eval/avg_at_k"]
        assert got["maj_at_k"] == logged["eval/maj_at_k"]
        assert got["response_len_mean"] == logged["eval/response_len_mean"]
        assert got["num_questions"] == logged["eval/num_prompts"] == 8
        lo, hi = got["avg_at_k_ci95"]
        assert lo <= got["avg_at_k"] <= hi
    assert logged["eval/avg_at_k"] > 0  # right samples: the equalities above are not 0 == 0
    assert 1 < logged["eval/response_len_mean"] < 16
    assert report["k"] == 4 and "avg@4 [95% CI]" in real_run["evaluated"].stdout
    # An HF directory (here the export) evaluates with a config of its own.
    out = real_run["root"] / "hf_eval"
    argv = ["python", "-m", "srpo_jax.evaluate", "--config=configs/demo.py", *DEMO[1:],
            f"--hf_path={real_run['export']}", f"--out={out}"]  # fmt: skip
    _ok(cli(argv))
    report = json.loads((out / "evaluation.json").read_text())
    assert report["model"] == {"hf_path": str(real_run["export"])} and report["k"] == 4
    assert report["results"]["overall"]["num_questions"] == 8


def _check_slurm_command(real_run):
    argv = real_run["docs"]["slurm"]
    assert argv[0] == "sbatch"
    script = next(i for i, a in enumerate(argv) if a.endswith("slurm_gpu.sh"))
    assert (REPO_ROOT / argv[script]).resolve() == SLURM.resolve()
    nodes = argv[argv.index("-N") + 1]
    proc = subprocess.run(
        ["bash", str(SLURM), "--dry-run", "--num-nodes", nodes, *argv[script + 1 :]],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "python -m srpo_jax.main" in proc.stdout


def test_the_readme_real_run_commands_then_export_and_evaluate(tmp_path, server, warm_demo):  # noqa: F811
    # One test item on purpose: the checks share one trained run, and xdist would build a
    # module-scoped fixture once per worker that receives one of its tests.
    real_run = _real_run(tmp_path, server, warm_demo)
    _check_data_run_and_resume(real_run)
    _check_export_logits(real_run)
    _check_teacher_export(real_run)
    _check_evaluation(real_run)
    _check_slurm_command(real_run)
