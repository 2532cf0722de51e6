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


def test_modules_stay_small():
    """One concept per module, each under ~800 lines (STYLE.md 1)."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "akaros_sim").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 850} == {}
