"""The method table: records of switches, and no module of srpo_jax compares a method name."""

import ast
import pathlib

import pytest

from srpo_jax.algo import methods

SRC = pathlib.Path(__file__).resolve().parents[2] / "srpo_jax"


def test_the_table_holds_spec_10_defaults():
    # SPEC 10: GRPO 1e-6 with mini-batches of 8 prompts; SDPO 1e-5 with 32; SRPO halfway.
    lr = {m: methods.get(m).lr for m in methods.names()}
    mb = {m: methods.get(m).mini_batch_prompts for m in methods.names()}
    assert lr == {"grpo": 1e-6, "sdpo": 1e-5, "srpo": 5.5e-6, "srpo_no_dw": 5.5e-6,
                  "advantage_mix": 5.5e-6}  # fmt: skip
    assert mb == {"grpo": 8, "sdpo": 32, "srpo": 32, "srpo_no_dw": 32, "advantage_mix": 32}
    assert [m for m in methods.names() if methods.get(m).uses_teacher] == [
        "sdpo", "srpo", "srpo_no_dw", "advantage_mix"
    ]  # fmt: skip


def test_unknown_method_and_inconsistent_record_are_refused():
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        methods.get("ppo")
    with pytest.raises(ValueError, match="entropy weights need an SDPO term"):
        methods.Method("x", "none", True, True, False, 1e-6, 8)


def _compared_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every comparison of a string literal naming a method."""
    names = set(methods.names())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                for c in consts:
                    if isinstance(c, ast.Constant) and c.value in names:
                        out.append((node.lineno, c.value))
    return out


# The study's reports (compare/report.py's table, compare/intervals.py's intervals) state
# the paper's claims about named runs (e.g. SRPO's cost falls over training): they read
# results keyed by name and train nothing, so they are exempt.
REPORTS = {"compare/report.py", "compare/intervals.py"}


def test_no_module_compares_a_method_name():
    found = {
        rel: hits
        for path in sorted(SRC.rglob("*.py"))
        if (rel := str(path.relative_to(SRC))) not in REPORTS
        and (hits := _compared_names(ast.parse(path.read_text())))
    }
    assert found == {}
