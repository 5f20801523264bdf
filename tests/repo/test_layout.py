"""The size rules of the layout: few top-level modules, files and functions one can read in a
sitting, a README that stays a user's page. Read from the source with `ast`."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "srpo_jax"
# Report and study code (tables, claims) may run to 80 lines a function.
REPORT_CODE = ("compare/", "trainer/report.py")


def _long_functions(source: str, where: str, limit: int) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                out.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_at_most_ten_top_level_modules():
    modules = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 10, modules


def test_no_file_over_600_lines():
    long = [
        str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if len(p.read_text().splitlines()) > 600
    ]
    assert long == []


def test_no_function_over_60_lines_and_report_code_80():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        long += _long_functions(path.read_text(), rel, 80 if rel.startswith(REPORT_CODE) else 60)
    assert long == []


def test_the_length_check_counts_def_line_to_last_line():
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    assert _long_functions(f"def f():\n{body}\n", "a.py", 60) == []  # 60 lines
    inner = "\n".join(f"        x{i} = {i}" for i in range(60))
    nested = f"class A:\n    def g(self):\n{inner}\n"
    assert _long_functions(nested, "a.py", 60) == ["a.py:2 g (61 lines)"]


def test_readme_is_a_users_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
