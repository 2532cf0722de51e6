"""The scenarios shipped with the package: listed by `akaros-sim list`, run by name (`akaros-sim run NAME`)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def scenario_dir() -> Path | None:
    """Where the shipped scenarios are: the package `akaros_sim.scenarios` (the repository's scenarios/)."""
    try:
        root = importlib.resources.files("akaros_sim.scenarios")
    except ModuleNotFoundError:
        return None
    path = Path(str(root))
    return path if path.is_dir() else None


def shipped_scenarios() -> list[Path]:
    """Every shipped scenario file, sorted by name."""
    where = scenario_dir()
    return sorted(where.glob("*.toml")) if where is not None else []


def find_scenario(arg: str) -> Path:
    """A scenario path as given, or, for a bare name that is no file here, the shipped scenario of that name."""
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    where = scenario_dir()
    shipped = where / f"{arg}.toml" if where is not None else None
    return shipped if shipped is not None and shipped.is_file() else path
