"""Trace: one frozen record per transition, written as JSONL with a stable key order.

A record is (virtual time ns, vcore id or -1, uthread name or "", kind,
details).  Details are a tuple of (key, value) pairs in the order the emitter
gave them, with only ints, strings, bools, None and tuples of those as values:
nothing that depends on the host (no id(), no reprs with addresses), so the
same run gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable

import attrs

FORMAT = "akaros-sim-trace/1"
_RESERVED = frozenset({"t", "vc", "uth", "kind"})


_PLAIN = frozenset({int, str, bool, type(None)})


def _check_value(value):
    if type(value) in _PLAIN:
        return value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_check_value(v) for v in value)
    raise TypeError(f"trace details hold ints, strings, bools, None and tuples; got {type(value).__name__} {value!r}")


@attrs.frozen
class TraceRecord:
    """One transition."""

    t: int
    vc: int
    uth: str
    kind: str
    details: tuple[tuple[str, object], ...] = ()

    def get(self, key: str, default=None):
        for k, v in self.details:
            if k == key:
                return v
        return default

    def to_json(self) -> str:
        obj = {"t": self.t, "vc": self.vc, "uth": self.uth, "kind": self.kind}
        for k, v in self.details:
            obj[k] = list(v) if isinstance(v, tuple) else v
        return json.dumps(obj, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> TraceRecord:
        obj = json.loads(line)
        t, vc, uth, kind = obj.pop("t"), obj.pop("vc"), obj.pop("uth"), obj.pop("kind")
        details = tuple((k, _check_value(v)) for k, v in obj.items())
        return cls(t, vc, uth, kind, details)


class Trace:
    """The records of one run, in order.  Lifecycle: emit during the run; write/hash after."""

    def __init__(self, header: dict | None = None) -> None:
        self.header = {"format": FORMAT, **(header or {})}
        self.records: list[TraceRecord] = []

    def emit(self, t: int, vc: int, uth: str, kind: str, /, **details) -> TraceRecord:
        if not _RESERVED.isdisjoint(details):
            clash = sorted(_RESERVED.intersection(details))
            raise ValueError(f"trace record {kind!r}: detail key(s) {', '.join(clash)} are reserved")
        items = tuple(details.items())
        for _, v in items:
            if type(v) not in _PLAIN:
                items = tuple((k, _check_value(v)) for k, v in items)
                break
        return self.add(t, vc, uth, kind, items)

    def add(self, t: int, vc: int, uth: str, kind: str, details: tuple) -> TraceRecord:
        """Append a record whose details are already plain (key, value) pairs: the runtime's path."""
        rec = TraceRecord(t, vc, uth, kind, details)
        self.records.append(rec)
        return rec

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def of_kind(self, *kinds: str) -> list[TraceRecord]:
        return [r for r in self.records if r.kind in kinds]

    def counts(self) -> dict[str, int]:
        """Number of records per kind, sorted by kind."""
        return dict(sorted(Counter(r.kind for r in self.records).items()))

    def lines(self) -> Iterable[str]:
        yield json.dumps(self.header, separators=(",", ":"), sort_keys=True)
        for rec in self.records:
            yield rec.to_json()

    def to_jsonl(self) -> str:
        buf = io.StringIO()
        for line in self.lines():
            buf.write(line)
            buf.write("\n")
        return buf.getvalue()

    def write(self, path) -> None:
        """Write the JSONL file (header line, then one record per line)."""
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for line in self.lines():
                f.write(line + "\n")

    def digest(self) -> str:
        """sha256 of the JSONL bytes: equal digests, byte-identical traces."""
        h = hashlib.sha256()
        for line in self.lines():
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()

    @classmethod
    def read(cls, path) -> Trace:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if not lines:
            raise ValueError(f"{path}: empty trace file")
        trace = cls(json.loads(lines[0]))
        trace.records = [TraceRecord.from_json(line) for line in lines[1:] if line]
        return trace
