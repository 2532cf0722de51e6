"""Checked reading of TOML tables, for scenario files.

A `TableReader` wraps one table of a parsed TOML document with its key path
(`threads[2]`, `machine.costs`): it rejects unknown keys on construction
(naming the key and listing the allowed ones) and checks the type of every
value it hands out.  Every error is a `ScenarioError` whose message is one
line, ``FILE: KEY.PATH: what was expected, got what`` (attrs-style).
"""

from __future__ import annotations

import json
import types

__all__ = ["ScenarioError", "TableReader", "describe", "freeze", "is_instance", "json_text", "one_line"]

REQUIRED = object()  # get()'s default meaning "the key must be present"
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "a boolean", dict: "a table", list: "an array",
               float: "a float"}  # fmt: skip


class ScenarioError(ValueError):
    """A scenario that cannot be loaded or built; one line: ``FILE: KEY: expected ..., got ...``."""


class TableReader:
    """One TOML table and its key path.  Lifecycle: construct (unknown keys rejected), then read keys."""

    def __init__(self, file: str, where: str, table, allowed: tuple[str, ...]) -> None:
        self.file, self.where, self.allowed = file, where, allowed
        if not isinstance(table, dict):
            raise self.error("", f"expected a table, got {describe(table)}")
        self.table = table
        for key in table:
            if key not in allowed:
                raise self.error(key, f"unknown key (allowed: {', '.join(allowed) or 'none'})")

    def path(self, key: str) -> str:
        """The key path of `key` in this table ('' means the table itself)."""
        if not key:
            return self.where or "(top level)"
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.file}: {self.path(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, types_: tuple[type, ...], default=REQUIRED):
        """The value of `key`, of one of `types_` (a bool is not an int); `default` if absent."""
        if key not in self.table:
            if default is REQUIRED:
                raise self.error(key, f"missing (expected {_type_names(types_)})")
            return default
        value = self.table[key]
        if not is_instance(value, types_):
            raise self.error(key, f"expected {_type_names(types_)}, got {describe(value)}")
        return value

    def int(self, key: str, default=REQUIRED, minimum: int | None = 0):
        """An integer value, at least `minimum` (None: any)."""
        value = self.get(key, (int,), default)
        if isinstance(value, int) and minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """An array of strings (empty if absent)."""
        items = self.get(key, (list,), [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {describe(item)}")
        return tuple(items)

    def sub(self, key: str, allowed: tuple[str, ...], default=REQUIRED) -> TableReader | None:
        """A reader for the sub-table `key` (None if absent and default is None)."""
        table = self.get(key, (dict,), default)
        return None if table is None else TableReader(self.file, self.path(key), table, allowed)

    def tables(self, key: str, allowed: tuple[str, ...]) -> list[TableReader]:
        """Readers for the array of tables `key` (empty if absent)."""
        items = self.get(key, (list,), [])
        return [TableReader(self.file, f"{self.path(key)}[{i}]", item, allowed) for i, item in enumerate(items)]


def is_instance(value, types_) -> bool:
    """isinstance, except that a bool is only a bool (TOML's true is not the integer 1)."""
    if isinstance(value, bool):
        return bool in types_
    return isinstance(value, tuple(types_))


def _type_names(types_) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types_)


def describe(value) -> str:
    """A short one-line description of a value for messages: its type and (truncated) repr."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {text}".replace("\n", "\\n")


def json_text(value) -> str:
    """The JSON text of a trace detail value (strings as they are): how matchers compare values."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, separators=(",", ":"))


def freeze(value):
    """TOML values made immutable: arrays become tuples, tables read-only mappings."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    return value


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = str(exc) or type(exc).__name__
    return " / ".join(part.strip() for part in text.splitlines() if part.strip())
