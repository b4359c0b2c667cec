"""The house: imports run one way between the project's packages (imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("datagen", "model", "shapes_lab")
STAGES = ("datagen.captions", "datagen.p2p", "datagen.filter")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of its code, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{a.name}" for a in node.names)
            found.add(base)
    return {m for m in found if m.split(".")[0] in TOP}


def modules() -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for top in TOP for p in (ROOT / top).rglob("*.py")}


def package_of(module: str, packages: set[str]) -> str:
    """The deepest package (folder) that holds ``module``."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in packages and (ROOT / Path(*parts[:n])).is_dir():
            return ".".join(parts[:n])
    return parts[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def folder_graph() -> dict[str, set[str]]:
    mods = modules()
    packages = {m for m in mods if (ROOT / Path(*m.split("."))).is_dir()}
    graph: dict[str, set[str]] = {}
    for mod, imports in mods.items():
        src = package_of(mod, packages)
        for imp in imports:
            dst = package_of(imp, packages)
            if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                graph.setdefault(src, set()).add(dst)
    return graph


def test_no_import_cycle_between_folders():
    assert find_cycle(folder_graph()) is None


def test_model_has_no_import_cycle_between_files():
    mods = modules()
    graph = {m: {i for i in imps if i in mods and i != m and i.startswith("model")}
             for m, imps in mods.items() if m.startswith("model")}
    assert find_cycle(graph) is None


def test_the_shapes_world_is_a_leaf():
    for mod, imports in modules().items():
        if mod.startswith("datagen.shapes"):
            assert {i for i in imports if not i.startswith("datagen.shapes")} == set(), mod


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage_nor_the_editor(stage):
    for mod, imports in modules().items():
        if mod.startswith(stage):
            others = {i for i in imports if i.startswith(("model", "shapes_lab"))
                      or (i.startswith(STAGES) and not i.startswith(stage))}
            assert others == set(), mod


def test_datagen_never_imports_the_editor_or_the_lab():
    for mod, imports in modules().items():
        if mod.startswith("datagen"):
            assert {i for i in imports if i.startswith(("model", "shapes_lab"))} == set(), mod


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
