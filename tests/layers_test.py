"""The layers of ``jkt``, read from its source (no module is imported).

One sentence: the math, the models and the data (``jacobian``, ``losses``, ``penalties``,
``models``, ``data``) stand on a few utilities (``paths``, ``config``, ``parallel``,
``host_allocator``) and know nothing of training; the engine (``train``, ``checkpoint``,
``workdir``, ``torchvision_import``) stands on them; the experiments (``grids``,
``report``, ``bench``, ``cli``) stand on the engine. A module imports from its own layer
or below, never above, and no chain of imports leads back to where it started.

Every ``import`` statement counts, also one inside a function (a lazy import is still a
dependency). ``from jkt.x import y`` depends on ``jkt.x.y`` when that is a module, else
on ``jkt.x``. The implicit import of a module's parent packages is not counted (every
module depends on ``jkt/__init__.py`` that way, which imports everything).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "jkt"

LAYERS = (
    ("utilities", ("jkt.paths", "jkt.config", "jkt.config_file", "jkt.ranges", "jkt.parallel",
                   "jkt.host_allocator", "jkt.resources")),
    ("math, models, data", ("jkt.jacobian", "jkt.losses", "jkt.penalties", "jkt.models",
                            "jkt.data")),
    ("engine", ("jkt.train", "jkt.checkpoint", "jkt.workdir", "jkt.workdir_lock",
                "jkt.torchvision_import")),
    ("experiments", ("jkt.grids", "jkt.report", "jkt.bench", "jkt.cli")),
)
LOWER = ("jkt.jacobian", "jkt.losses", "jkt.penalties", "jkt.models", "jkt.data")
ENGINE_AND_ABOVE = ("jkt.train", "jkt.checkpoint", "jkt.workdir", "jkt.grids")


def _modules() -> dict[str, Path]:
    """``{"jkt.train.loop": path}`` of every module (packages by their ``__init__``)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set[str]:
    """The ``jkt`` modules that module ``name`` imports (see the module docstring)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # a name imported from a module: the module
                t = t.rpartition(".")[0]
            if t.startswith("jkt") and t != name:
                deps.add(t)
    return deps


GRAPH = {name: imports_of(name) for name in MODULES}


def _layer(name: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "jkt" and _layer(m) is None] == []


def test_no_module_imports_from_a_higher_layer():
    bad = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
           for m, deps in sorted(GRAPH.items()) if m != "jkt"
           for d in sorted(deps) if d != "jkt" and _layer(d) > _layer(m)]
    assert bad == []


def test_math_models_and_data_know_nothing_of_training():
    bad = [f"{m} imports {d}" for m, deps in sorted(GRAPH.items())
           if m.startswith(LOWER) for d in sorted(deps) if d.startswith(ENGINE_AND_ABOVE)]
    assert bad == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


def test_the_checks_find_what_they_look_for():
    """A cycle and a reading of relative and named imports, on made-up input."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert imports_of("jkt.train.loop") >= {"jkt.train.step", "jkt.checkpoint"}
    assert "jkt.models" in imports_of("jkt.checkpoint") | set().union(
        *(imports_of(m) for m in MODULES if m.startswith("jkt.checkpoint.")))


def test_no_module_is_over_about_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sorted(sizes.items()) if n > 420} == {}
