"""The package's layout (issue 39, step 3): packages by role and paper, each importing only the layers below it.

Imports are read from the source (function-local ones included), so an import hidden inside a function to dodge a
circle counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import taskstudy

LIB = Path(taskstudy.__file__).resolve().parent
# lowest first; a package may import its own modules and those of any layer before it
LAYERS = (("engine",), ("<top>",), ("nn",), ("world",), ("taskonomy",), ("standley", "task2vec", "yosinski"),
          ("compare",), ("report",), ("book",))
RANK = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in LIB.rglob("*.py"):
        parts = p.relative_to(LIB.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _package(module: str, packages: set[str]) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # taskstudy/__init__.py: the version, nothing else
    return parts[1] if parts[1] in packages else "<top>"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name and t != "taskstudy"}
    return found


def package_edges() -> dict[str, set[str]]:
    modules = _modules()
    packages = {n.split(".")[1] for n, p in modules.items() if p.name == "__init__.py" and n.count(".") == 1}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = _package(name, packages)
        for target in _imports(name, path, modules):
            dst = _package(target, packages)
            if src and dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_every_package_has_a_layer():
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"<top>"} == set(RANK), "a new package needs its place in LAYERS"


def test_no_package_imports_one_above_it():
    """No circle between packages: the engine imports nothing of the study (the task names of a profile are
    checked by world.tasks.check_profile), the world nothing of the papers, a paper nothing of the comparisons."""
    upward = sorted(f"{a} -> {b}" for a, bs in package_edges().items() for b in bs if RANK[b] > RANK[a])
    assert not upward, upward


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: an engine module importing the world (inside a function) is found."""
    fake = {"taskstudy.engine.fake": tmp_path / "fake.py", "taskstudy.world.tasks": LIB / "world" / "tasks.py"}
    fake["taskstudy.engine.fake"].write_text("def f():\n    from taskstudy.world import tasks\n")
    assert _imports("taskstudy.engine.fake", fake["taskstudy.engine.fake"], fake) == {"taskstudy.world.tasks"}
