"""The code's layout rules (issue 25), read from the source: no import circle among `harness` modules, no function
over 60 lines, no per-run state set as attributes on a model, and every entry point building its model through
the run recipe (`harness.recipe`). Pure AST: no import of the package, a second or two."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "harness"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def top_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The harness modules `name` imports when it is imported (module body only: an import inside a function is a
    deliberate late one)."""
    found = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def test_the_import_graph_of_the_package_has_no_circle():
    trees = modules()
    graph = {name: top_level_imports(name, tree, set(trees)) for name, tree in trees.items()}
    # a package's __init__ importing its own submodules (the method registry) is how registration works
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, f"import circles: {circles}"


def test_no_function_in_the_package_is_over_60_lines():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_no_run_state_is_set_as_an_attribute_on_a_model():
    """A run's state lives in its handle (`harness.methods.Adapted.state`); nothing `_harness_*` rides on a model."""
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_harness"):
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and str(node.args[1].value).startswith("_harness"):
                found.append(f"{name}:{node.lineno} setattr {node.args[1].value!r}")
    assert not found, found


def calls(tree: ast.AST, owner: str, attribute: str) -> list[int]:
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
            and isinstance(node.func.value, ast.Name) and node.func.value.id == owner]


def test_every_entry_point_builds_its_model_through_the_recipe():
    """Loading a model, applying a method and deciding the placement happen in `harness.recipe` alone (and the
    modules that define them), for the package and the `experiments/` scripts alike."""
    sources = {name: tree for name, tree in modules().items()}
    for path in sorted((ROOT / "experiments").glob("*.py")):
        sources[f"experiments/{path.name}"] = ast.parse(path.read_text())
    # (the judge of AlpacaEval loads a judge model, not the run's)
    owners = {("models", "load"): {"harness.models", "harness.benchmarks.instruct.judge"},
              ("methods", "apply"): {"harness.methods"}}
    outside = []
    for name, tree in sources.items():
        if name == "harness.recipe":
            continue
        for (owner, attribute), homes in owners.items():
            if name in homes:
                continue
            outside += [f"{name}:{line} {owner}.{attribute}" for line in calls(tree, owner, attribute)]
        outside += [f"{name}:{node.lineno} decide()" for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "decide"
                    and name not in {"harness.placement", "harness.models", "harness.run", "harness.train"}]
    assert not outside, outside
