"""Import direction of srpo_jax, read from the source with `ast` (nothing is imported).

The layers, lowest first (docs/architecture.md): config_checks, sharding, multihost and
process plumbing -> model, data, kernels -> algo, rollout -> learner -> the config tree ->
trainer -> cli -> main, plan, aot, compare, export, evaluate. A module imports only its own
layer or lower, except the section configs (every package's config.py, algo/methods.py,
kernels/options.py), which any layer may import and which themselves import only each other
and config_checks.
There is no import cycle anywhere in the package (imports inside functions count too: a
cycle through a lazy import is still a cycle in the design).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "srpo_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from srpo_jax.algo import routing" depends on the submodule routing;
                # "from srpo_jax.algo.routing import route" on the module routing.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("srpo_jax") and t != name and t != "srpo_jax":
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS, three colours)."""
    colour: dict[str, int] = {}
    for root in sorted(graph):
        if colour.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_there_is_no_import_cycle():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Layer of each top-level module or package of srpo_jax (higher may import lower).
LAYER = {
    "config_checks": 0,
    "disk": 0,
    "jax_startup": 0,
    "log_levels": 0,
    "lazy_exports": 0,
    "sharding": 0,
    "multihost": 0,
    "model": 1,
    "data": 1,
    "kernels": 1,
    "algo": 2,
    "rollout": 2,
    "learner": 3,
    "config": 4,
    "trainer": 5,
    "cli": 6,
    "main": 7,
    "plan": 7,
    "aot": 7,
    "compare": 7,
    "export": 7,
    "evaluate": 7,
}
SECTION_CONFIG_EXTRAS = (
    "srpo_jax.config_checks",
    "srpo_jax.kernels.options",
    "srpo_jax.algo.methods",
)


def _is_section_config(module: str) -> bool:
    leaf_config = module.endswith(".config") and module != "srpo_jax.config"
    return leaf_config or module in SECTION_CONFIG_EXTRAS


def _layer(module: str) -> int:
    return LAYER[module.split(".")[1]]


def test_every_import_points_down_the_layers():
    graph = _graph()
    assert set(LAYER) == {n.split(".")[1] for n in graph if n != "srpo_jax"}
    wrong = []
    for name, deps in graph.items():
        for dep in deps:
            if _is_section_config(name):
                if not _is_section_config(dep):
                    wrong.append((name, dep))
            elif name != "srpo_jax" and not _is_section_config(dep) and _layer(dep) > _layer(name):
                wrong.append((name, dep))
    assert wrong == []


def test_the_layer_check_finds_an_upward_import():
    assert _layer("srpo_jax.learner.train_step") > _layer("srpo_jax.rollout.sglang")
    assert not _is_section_config("srpo_jax.config") and _is_section_config("srpo_jax.data.config")


def test_sharding_imports_nothing_of_ours_and_the_model_only_low_layers():
    graph = _graph()
    assert graph["srpo_jax.sharding.config"] == set()
    assert graph["srpo_jax.sharding.mesh"] == {"srpo_jax.sharding.config"}
    low = (
        "srpo_jax.model",
        "srpo_jax.sharding",
        "srpo_jax.kernels",
        "srpo_jax.config_checks",
        "srpo_jax.lazy_exports",
    )
    for name, deps in graph.items():
        if name.startswith("srpo_jax.model"):
            assert all(d.startswith(low) for d in deps), (name, deps)


def test_the_library_never_imports_the_tools():
    # aot (the plan, the device check) and compare sit on top of the library.
    tools = ("srpo_jax.aot", "srpo_jax.compare", "srpo_jax.plan", "srpo_jax.main")
    tools += ("srpo_jax.export", "srpo_jax.evaluate")
    for name, deps in _graph().items():
        if not name.startswith(tools):
            assert not any(d.startswith(tools) for d in deps), (name, deps)
