"""The package's import structure: no import cycles among rlkit/reward modules (a graph of every module's
top-level imports), reward/ never imports the RL side, project imports sit at the top of files, and every
module imports in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rlkit", "reward")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool) -> list[tuple[str, int]]:
    """Project modules imported by ``path`` (absolute names), with line numbers; ``top_level_only`` skips
    imports inside functions/classes."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return [(n, ln) for n, ln in found if n.split(".")[0] in PACKAGES]


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = {n for n, _ in _imports(path, name, top_level_only=True) if n in mods and n != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_reward_imports_nothing_of_the_rl_side():
    for name, deps in _graph().items():
        if name.startswith("reward"):
            bad = sorted(d for d in deps if d.startswith(("rlkit.trainers", "rlkit.credit", "rlkit.launch",
                                                          "rlkit.algorithms")))
            assert not bad, f"{name} imports {bad}"


def test_project_imports_are_at_the_top_of_files():
    late = []
    for name, path in _modules().items():
        top = {ln for _, ln in _imports(path, name, top_level_only=True)}
        src = path.read_text().splitlines()
        for mod, ln in _imports(path, name, top_level_only=False):
            if ln not in top and not src[ln - 1].lstrip().startswith(">>>"):
                late.append(f"{path.relative_to(REPO)}:{ln} {mod}")
    assert not late, "imports inside functions:\n" + "\n".join(sorted(set(late)))


def test_every_module_imports_in_one_fresh_interpreter():
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\nprint('ok', len(%r))" % (names, names)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
