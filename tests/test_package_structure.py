"""The package's shape: no import cycle anywhere, small modules, predict/evaluate never
importing the training loop."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "lmjax"
MAX_LINES = 400
# A module over MAX_LINES must say why in its first lines.
WHY = "longer than"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """lmjax modules `path` imports, anywhere in the file (lazy imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def reaches(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in g[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    known = {"lmjax.train", "lmjax.train.loop", "lmjax.train.setup", "lmjax.task"}
    path = PACKAGE / "train" / "loop.py"
    assert {"lmjax.train.setup", "lmjax.task"} <= imports(path, known | set(modules()))


@pytest.mark.parametrize("consumer", ["lmjax.predict", "lmjax.train.evaluation"])
def test_inference_never_imports_the_training_loop(consumer):
    assert "lmjax.train.loop" not in reaches(graph(), consumer)


def test_lower_floors_never_import_higher_ones():
    g = graph()
    for low in ("lmjax.ops", "lmjax.data", "lmjax.models", "lmjax.metrics"):
        for name in [n for n in g if n == low or n.startswith(low + ".")]:
            bad = {m for m in reaches(g, name) if m.startswith(("lmjax.train", "lmjax.cli"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_modules_are_small_or_say_why():
    long = []
    for name, path in modules().items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and WHY not in "\n".join(text.splitlines()[:15]):
            long.append(f"{name} ({n} lines)")
    assert not long, f"over {MAX_LINES} lines without a reason at the top: {long}"
