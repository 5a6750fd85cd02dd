"""The package layout: no import cycles among project modules, and probes/patching never import mechedit.

Both checks read the source with ``ast`` (module-level and in-function imports alike), so they need no model
and catch a cycle that only closes inside a function. They were written before the layout was fixed and are
not tuned: a new cycle or a new ``import mechedit`` in probes/patching makes them fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mechedit", "probes", "patching")


def module_files() -> dict[str, Path]:
    """Every project module's dotted name -> its file."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names a file imports anywhere in it (relative imports resolved; ``from a import b`` gives a.b)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def project_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (a name resolves to its longest module prefix)."""
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in files.items():
        deps = {resolve(n) for n in imported_names(path, mod)} - {None, mod}
        # importing a submodule runs its package's __init__; a package importing its own submodules is not a cycle
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_sees_a_planted_cycle():
    """The checker itself: a planted three-module cycle is found, an acyclic graph passes."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    """No cycle among project modules, counting imports inside functions."""
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", ["probes", "patching"])
def test_probes_and_patching_never_import_mechedit(package):
    """probes/ and patching/ (and their tests) stand alone: no mechedit import anywhere in them."""
    files = [p for m, p in module_files().items() if m.split(".")[0] == package]
    files += sorted((ROOT / "tests").glob(f"test_{package}*.py"))
    assert files
    offenders = [f"{p.relative_to(ROOT)}" for p in files
                 if any(n.split(".")[0] == "mechedit" for n in imported_names(p, package))]
    assert not offenders, f"{package} must not import mechedit: {offenders}"


def test_subpackages_import_cleanly():
    """Subpackage modules import by their dotted path (no package name is rebound to a function)."""
    code = "import mechedit.localize.probe, mechedit.evaluate.latent"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays inside its module (e.g. factworld never reaches into models)."""
    offenders = []
    for mod, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                offenders += [f"{mod}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders
