"""The package layout, read from the source files: stages in order, no cycles, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# The stages in the order a run passes through them; each may import only itself and those before it.
STAGES = (
    "config_fields",
    "config_model",
    "config_train",
    "config",
    "config_files",
    "presets",
    "cluster",
    "data",
    "model",
    "runs",
    "serving",
    "training",
)
PIPELINE = REPO / "pipeline"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """pipeline module -> the pipeline modules it imports (at any depth of the file)."""
    modules = {_module(p): p for p in PIPELINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
        graph[name] = {m for m in found if m != name and m != "pipeline"}
    return graph


def _stage(module: str) -> int:
    return STAGES.index(module.split(".")[1]) if module != "pipeline" else -1


def test_every_module_belongs_to_a_stage_and_each_package_says_what_it_may_import():
    graph = _imports()
    for module in graph:
        if module != "pipeline":
            assert module.split(".")[1] in STAGES, f"{module} is in no stage package"
    for package in [p for p in PIPELINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"{package.name}/__init__.py needs a docstring saying what it may import"
        )


def test_no_stage_imports_a_later_one():
    upward = [
        f"{module} -> {target}"
        for module, targets in _imports().items()
        if module != "pipeline"
        for target in targets
        if _stage(target) > _stage(module)
    ]
    assert not upward, upward


def test_the_import_graph_has_no_cycles():
    graph, state, cycles = _imports(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_module_names_are_unique_across_stage_packages():
    stems = [p.stem for p in PIPELINE.rglob("*.py") if p.stem != "__init__"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)


def test_pipeline_never_imports_tuning_or_launch():
    for path in PIPELINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n and n.split(".")[0] in ("tuning", "launch") for n in names), path
