"""Safety: model output is never run as code, weights never go through pickle, servers
listen on the loopback interface unless configured otherwise.

The source checks parse every module of srpo_jax/ with `ast` (so comments and strings do
not count) and fail naming the file and line of each offending call or import.
"""

import ast
import builtins
import dataclasses
import inspect
import json
import os
import pathlib
import subprocess

import pytest

from srpo_jax.data import rewards

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "srpo_jax"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# Builtins that run a string as code (ast.literal_eval only builds literals and is fine).
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}
# Modules whose loading runs arbitrary code from the file.
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
PICKLE_MODULES |= {"marshal"}


def _dotted(node: ast.AST) -> str:
    """'a.b.c' for a Name/Attribute chain, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _true_or_unknown(call: ast.Call, keyword: str) -> bool:
    for kw in call.keywords:
        if kw.arg == keyword:
            return not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
    return False


def _violations(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else names
            for module in modules:
                if module.split(".")[0] in PICKLE_MODULES:
                    found.append((node.lineno, f"imports {module}"))
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in names:
                found.append((node.lineno, "imports torch.load"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        runs_code = name in CODE_BUILTINS or name.removeprefix("builtins.") in CODE_BUILTINS
        unpickles = name == "torch.load" or last in {"read_pickle", "loads_pickle"}
        if runs_code or unpickles:
            found.append((node.lineno, f"calls {name}"))
        elif last == "load" and name.split(".")[0] in {"np", "numpy", "jnp"}:
            if _true_or_unknown(node, "allow_pickle"):
                found.append((node.lineno, f"calls {name}(allow_pickle=True)"))
        elif name == "yaml.load":
            found.append((node.lineno, "calls yaml.load (use yaml.safe_load)"))
        elif last == "from_pretrained" and ("AutoModel" in name or "ForCausalLM" in name):
            # transformers may fall back to pickled pytorch_model.bin; weights go via hf_io.
            found.append((node.lineno, f"calls {name}"))
        elif _true_or_unknown(node, "shell"):
            found.append((node.lineno, f"calls {name}(shell=True)"))
    return found


def test_scan_finds_what_it_should():
    """The scanner itself, on a snippet with one of each banned construct."""
    snippet = """
import pickle
from torch import load
eval("1"); exec("x = 1"); builtins.compile("1", "f", "eval")
torch.load("w.pt"); np.load("a.npy", allow_pickle=True); np.load("a.npy")
yaml.load(f); AutoModelForCausalLM.from_pretrained("d"); subprocess.run("ls", shell=True)
ast.literal_eval("[1]"); re.compile("x"); AutoTokenizer.from_pretrained("d")
"""
    lines = [line for line, _ in _violations(ast.parse(snippet))]
    assert lines == sorted(lines) and lines.count(2) == 1 and lines.count(3) == 1
    assert lines.count(4) == 3 and lines.count(5) == 2 and lines.count(6) == 3
    assert 7 not in lines


def test_no_eval_exec_or_pickle_in_the_package():
    assert len(SOURCES) > 20, SOURCES
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        problems += [
            f"{path.relative_to(PACKAGE.parent)}:{n}: {what}" for n, what in _violations(tree)
        ]
    assert not problems, "\n".join(problems)


def test_weights_load_through_safetensors_and_orbax():
    hf_io = (PACKAGE / "model" / "hf_io.py").read_text()
    ckpt = (PACKAGE / "trainer" / "checkpoint.py").read_text()
    assert "from safetensors import safe_open" in hf_io
    assert "import orbax.checkpoint" in ckpt


@pytest.fixture
def no_code_execution(monkeypatch, tmp_path):
    """Any attempt to run code or a command while scoring fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"code execution attempted: {args!r:.200}")

    for name in ("eval", "exec", "compile", "__import__"):
        # __import__ stays usable for the import machinery; only calls from rewards matter.
        if name != "__import__":
            monkeypatch.setattr(builtins, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(os, "popen", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    return tmp_path / "pwned"


def test_rewards_never_run_the_response(no_code_execution):
    marker = no_code_execution
    payload = f"__import__('os').system('touch {marker}')"
    gt = json.dumps([{"Action": "run", "Action_Input": json.dumps({"cmd": "ls"})}])
    responses = [
        f'Action: run\nAction Input: {{"cmd": {payload}}}',  # code where JSON should be
        f"Action: run\nAction Input: {payload}",
        f"Action: {payload}\nAction Input: {{}}",
        f"<answer>{payload}</answer>",
        payload,
    ]
    for text in responses:
        assert rewards.reward("tooluse", text, gt) == 0.0
        assert rewards.reward("mcq", text, "A") == 0.0
        rewards.answer_key("tooluse", text)
        rewards.answer_key("mcq", text)
    # Code inside a JSON string stays a string: compared as data, never run.
    as_data = json.dumps({"cmd": payload})
    gt_data = json.dumps([{"Action": "run", "Action_Input": as_data}])
    assert rewards.reward("tooluse", f"Action: run\nAction Input: {as_data}", gt_data) == 1.0
    assert not marker.exists()


def test_servers_bind_to_loopback_by_default():
    sglang = pytest.importorskip("srpo_jax.rollout.sglang", reason="SGLang engine module absent")
    sglang_server = pytest.importorskip("srpo_jax.rollout.sglang_server")
    # Read the dataclass default: building the config needs a server URL or launch command.
    defaults = {f.name: f.default for f in dataclasses.fields(sglang.SGLangConfig)}
    assert defaults["host"] == "127.0.0.1"
    assert inspect.signature(sglang_server.free_port).parameters["host"].default == "127.0.0.1"
    # The run config's section: if it ever gains a host field, it must default to loopback.
    from srpo_jax.config import SGLangConfig

    fields = {f.name: f for f in dataclasses.fields(SGLangConfig)}
    if "host" in fields:
        assert fields["host"].default == "127.0.0.1"
