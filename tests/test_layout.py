"""The shape of the package: the public API, its page, and one-way layering."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import akaros_sim

ROOT = Path(__file__).resolve().parents[1]
# The modules a 2LS may import from (besides the package itself).
PUBLIC_MODULES = {"akaros_sim", "akaros_sim.parlib", "akaros_sim.kernel", "akaros_sim.context",
                  "akaros_sim.uthread", "akaros_sim.interpose"}  # fmt: skip


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) for every import statement in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
    return out


def test_every_exported_name_exists():
    """Each name in akaros_sim.__all__ is an attribute of the package."""
    assert [n for n in akaros_sim.__all__ if not hasattr(akaros_sim, n)] == []


def test_api_page_lists_exactly_the_public_api():
    """docs/api.md names every entry of __all__ once, and nothing else, as `- `name`:` items."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    listed = re.findall(r"^- `([\w]+)`:", page, flags=re.M)
    assert sorted(listed) == sorted(akaros_sim.__all__)
    assert len(listed) == len(set(listed))


def test_akaros_sim_never_imports_schedops():
    """The simulator does not depend on any 2LS (it finds them by name, as data)."""
    for path in sorted((ROOT / "akaros_sim").glob("*.py")):
        bad = [m for m, _ in imports(path) if m == "schedops" or m.startswith("schedops.")]
        assert bad == [], f"{path.name} imports {bad}"


def test_schedops_use_only_the_public_api():
    """A 2LS imports only public modules, and no underscore names from them."""
    for path in sorted((ROOT / "schedops").glob("*.py")):
        for module, names in imports(path):
            if module == "akaros_sim" or module.startswith("akaros_sim."):
                assert module in PUBLIC_MODULES, f"{path.name} imports {module}"
                assert not [n for n in names if n.startswith("_")], f"{path.name} imports private {names}"


def _package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (tools included)."""
    out = {}
    for path in sorted((ROOT / "akaros_sim").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_tool(name: str) -> bool:
    return name.startswith("akaros_sim.tools")


def test_modules_stay_small():
    """One concept per module, each under ~500 lines; the façade under 300."""
    sizes = {name: len(p.read_text(encoding="utf-8").splitlines()) for name, p in _package_modules().items()}
    assert {name: n for name, n in sizes.items() if n > 520 and not _is_tool(name)} == {}
    assert sizes["akaros_sim.simulation"] <= 300


def _module_imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """The package modules a module imports (at its top level, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("akaros_sim"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("akaros_sim"))
    return found


def test_the_runtime_imports_form_no_cycle():
    """The runtime's imports run one way: the graph of package modules (tools aside) has no cycle."""
    modules = _package_modules()
    graph = {
        name: sorted(m for m in _module_imports(name, path, False) if m in modules and m != name and m != "akaros_sim")
        for name, path in modules.items()
        if name != "akaros_sim"
    }
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_runtime_modules_import_at_the_top_only():
    """No runtime module imports a package module inside a function (which would hide a cycle)."""
    bad = {}
    for name, path in _package_modules().items():
        if _is_tool(name) or name == "akaros_sim":
            continue
        hidden = _module_imports(name, path, False) - _module_imports(name, path, True)
        if hidden:
            bad[name] = sorted(hidden)
    assert bad == {}


def test_every_greenlet_switch_is_in_the_engine():
    """greenlet switch and throw appear in engine.py only (the one narrow waist)."""
    offenders = []
    for name, path in _package_modules().items():
        if name == "akaros_sim.engine":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("switch", "throw"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_no_private_name_is_used_across_runtime_modules():
    """A runtime module imports no underscore name from another package module."""
    bad = []
    for name, path in _package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("akaros_sim"):
                bad += [f"{name} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    assert bad == []
