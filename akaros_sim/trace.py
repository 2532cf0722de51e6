"""Trace: one frozen record per transition, written as JSONL with a stable key order.

A record is (virtual time ns, vcore id or -1, uthread name or "", kind,
details).  Details are a tuple of (key, value) pairs in the order the emitter
gave them, with only ints, strings, bools, None and tuples of those as values:
nothing that depends on the host (no id(), no reprs with addresses), so the
same run gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
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


def _row_json(t: int, vc: int, uth: str, kind: str, details: tuple) -> str:
    obj = {"t": t, "vc": vc, "uth": uth, "kind": kind}
    for k, v in details:
        obj[k] = list(v) if isinstance(v, tuple) else v
    return json.dumps(obj, separators=(",", ":"))


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
        return _row_json(self.t, self.vc, self.uth, self.kind, self.details)

    @classmethod
    def from_json(cls, line: str) -> TraceRecord:
        obj = json.loads(line)
        t, vc, uth, kind = obj.pop("t"), obj.pop("vc"), obj.pop("uth"), obj.pop("kind")
        details = tuple((k, _check_value(v)) for k, v in obj.items())
        return cls(t, vc, uth, kind, details)


class Trace:
    """The records of one run, in order.  Lifecycle: emit during the run; write/hash after.

    The runtime appends plain tuples (cheap on the hot path); the TraceRecord
    objects are built when someone reads `records`, once each.  A Trace made
    with `enabled=False` keeps nothing at all: the runtime then skips building
    records (see Process.tracing), for runs that only want results.
    """

    def __init__(self, header: dict | None = None, *, enabled: bool = True) -> None:
        self.header = {"format": FORMAT, **(header or {})}
        self.enabled = enabled
        # Five fields a record, flat, in emission order: no container object per record, so
        # a long trace adds nothing for the cyclic garbage collector to look at.
        self._flat: list = []
        self._built: list[TraceRecord] = []  # TraceRecords of a prefix of the records

    def _rows(self, start: int = 0):
        flat = self._flat
        for i in range(5 * start, len(flat), 5):
            yield flat[i : i + 5]

    @property
    def records(self) -> list[TraceRecord]:
        built = self._built
        if 5 * len(built) < len(self._flat):
            built.extend(TraceRecord(*row) for row in self._rows(len(built)))
        return built

    @records.setter
    def records(self, records: list[TraceRecord]) -> None:
        self._built = list(records)
        self._flat = [field for r in self._built for field in (r.t, r.vc, r.uth, r.kind, r.details)]

    def emit(self, t: int, vc: int, uth: str, kind: str, /, **details) -> TraceRecord | None:
        if not _RESERVED.isdisjoint(details):
            clash = sorted(_RESERVED.intersection(details))
            raise ValueError(f"trace record {kind!r}: detail key(s) {', '.join(clash)} are reserved")
        items = tuple(details.items())
        for _, v in items:
            if type(v) not in _PLAIN:
                items = tuple((k, _check_value(v)) for k, v in items)
                break
        if not self.enabled:
            return None
        self._flat += (t, vc, uth, kind, items)
        return self.records[-1]

    def appender(self):
        """A callable taking one record as a tuple (t, vc, uth, kind, details), for the runtime's
        hot paths, or None when this trace keeps nothing.  It is the `extend` of the list of
        fields, so its `__self__` is that list (five fields a record) for hot paths that count."""
        return self._flat.extend if self.enabled else None

    def add(self, t: int, vc: int, uth: str, kind: str, details: tuple) -> None:
        """Append a record whose details are already plain (key, value) pairs: the runtime's path."""
        if self.enabled:
            self._flat += (t, vc, uth, kind, details)

    def __len__(self) -> int:
        return len(self._flat) // 5

    def row(self, index: int) -> tuple:
        """Record #index as a tuple (t, vc, uth, kind, details), without building a TraceRecord."""
        if not 0 <= index < len(self):
            raise IndexError(f"no trace record #{index} (the trace has {len(self)})")
        return tuple(self._flat[5 * index : 5 * index + 5])

    def __iter__(self):
        return iter(self.records)

    def of_kind(self, *kinds: str) -> list[TraceRecord]:
        records = self.records
        return [records[i] for i, kind in enumerate(self._flat[3::5]) if kind in kinds]

    def counts(self) -> dict[str, int]:
        """Number of records per kind, sorted by kind."""
        return dict(sorted(Counter(self._flat[3::5]).items()))

    def lines(self) -> Iterable[str]:
        yield json.dumps(self.header, separators=(",", ":"), sort_keys=True)
        for row in self._rows():
            yield _row_json(*row)

    def to_jsonl(self) -> str:
        buf = io.StringIO()
        for line in self.lines():
            buf.write(line)
            buf.write("\n")
        return buf.getvalue()

    def write(self, path) -> None:
        """Write the JSONL file (header line, then one record per line), atomically: a temporary file
        beside it is renamed over it once complete, so no half-written trace is ever left."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".tmp", dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for line in self.lines():
                    f.write(line + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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
