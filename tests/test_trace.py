"""Trace: records, the JSONL format (header first, stable key order), digests, and what a detail may hold."""

from __future__ import annotations

import hashlib
import json

import attrs
import pytest

from akaros_sim.trace import FORMAT, Trace, TraceRecord
from schedops.pthread import PthreadSched
from scripted_2ls import Fifo2LS, spin_sim


def _small_trace() -> Trace:
    trace = Trace({"vcores": 2, "seed": 7})
    trace.emit(0, -1, "", "sched_init", sched="fifo")
    trace.emit(150, 0, "a", "run", how="run_uthread")
    trace.emit(900, 1, "b", "syscall", sysc=1, name="write", args=(1, 4096, 6))
    trace.emit(900, 1, "b", "console", fd=1, text="hi\n")
    return trace


# -- format -----------------------------------------------------------------------------------


def test_jsonl_is_the_header_then_one_line_per_record():
    """The header (format first, keys sorted) is line one; then each record in emission order."""
    assert _small_trace().to_jsonl().splitlines() == [
        '{"format":"akaros-sim-trace/1","seed":7,"vcores":2}',
        '{"t":0,"vc":-1,"uth":"","kind":"sched_init","sched":"fifo"}',
        '{"t":150,"vc":0,"uth":"a","kind":"run","how":"run_uthread"}',
        '{"t":900,"vc":1,"uth":"b","kind":"syscall","sysc":1,"name":"write","args":[1,4096,6]}',
        '{"t":900,"vc":1,"uth":"b","kind":"console","fd":1,"text":"hi\\n"}',
    ]


def test_record_keys_are_t_vc_uth_kind_then_details_in_emission_order():
    """Details keep the order they were given in, not alphabetical order."""
    trace = Trace()
    rec = trace.emit(5, 2, "u", "custom", zeta=1, alpha=2, mid=None)
    assert list(json.loads(rec.to_json())) == ["t", "vc", "uth", "kind", "zeta", "alpha", "mid"]
    assert rec.details == (("zeta", 1), ("alpha", 2), ("mid", None))


def test_every_line_of_a_real_run_has_the_stable_key_order_and_no_host_addresses():
    """A pthread run's JSONL: header with format, then records keyed t, vc, uth, kind first; no reprs."""
    sim = spin_sim(PthreadSched(), 2, a=(1000, 1), b=(1000, 2))
    sim.preempt_at(3000, 0, duration_ns=1000)
    sim.run()
    header, *lines = sim.trace.to_jsonl().splitlines()
    assert json.loads(header) == {"format": FORMAT, "seed": 0, "vcores": 2}
    assert len(lines) == len(sim.trace.records)
    for line in lines:
        assert list(json.loads(line))[:4] == ["t", "vc", "uth", "kind"]
    assert " at 0x" not in sim.trace.to_jsonl()  # no object reprs


def test_counts_are_per_kind_sorted_by_kind():
    """counts() maps each kind to its number of records, keys in sorted order."""
    trace = _small_trace()
    trace.emit(901, 1, "b", "console", fd=1, text="again")
    assert list(trace.counts().items()) == [("console", 2), ("run", 1), ("sched_init", 1), ("syscall", 1)]
    assert [r.t for r in trace.of_kind("console", "run")] == [150, 900, 901]


# -- records ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        TraceRecord(0, -1, "", "sched_init", (("sched", "pthread"),)),
        TraceRecord(12, 3, "w-1", "syscall", (("sysc", 4), ("args", (1, 2, 3)), ("ok", True), ("ret", None))),
        TraceRecord(7, 0, "x", "nested", (("pairs", ((1, "a"), (2, "b"))), ("empty", ()))),
        TraceRecord(2**63, 0, "é", "unicode", (("text", "naïve\n\"quoted\""),)),
    ],
)
def test_trace_record_round_trips_through_json(record):
    """from_json(to_json(r)) == r: lists come back as tuples, key order and types kept."""
    assert TraceRecord.from_json(record.to_json()) == record


def test_trace_record_is_frozen_and_get_reads_a_detail():
    """Records cannot change once emitted; get() finds a detail or returns the default."""
    rec = _small_trace().records[2]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rec.t = 1
    assert (rec.get("name"), rec.get("args"), rec.get("missing", "none")) == ("write", (1, 4096, 6), "none")


@pytest.mark.parametrize(
    "details,message",
    [
        ({"t": 1}, "trace record 'x': detail key(s) t are reserved"),
        ({"vc": 1, "kind": "y", "ok": 2}, "trace record 'x': detail key(s) kind, vc are reserved"),
        ({"uth": "z"}, "trace record 'x': detail key(s) uth are reserved"),
    ],
)
def test_reserved_detail_keys_are_rejected(details, message):
    """A detail named t, vc, uth or kind would clash with the record's own keys: ValueError naming them."""
    trace = Trace()
    with pytest.raises(ValueError) as info:
        trace.emit(0, 0, "", "x", **details)
    assert str(info.value) == message
    assert trace.records == []


@pytest.mark.parametrize(
    "value,message",
    [
        (1.5, "float 1.5"),
        ({"a": 1}, "dict {'a': 1}"),
        ((1, 2.5), "float 2.5"),
        (b"raw", "bytes b'raw'"),
    ],
)
def test_non_json_detail_values_are_rejected_with_a_clear_type_error(value, message):
    """Only ints, strings, bools, None and tuples of them are allowed; anything else names its type and value."""
    trace = Trace()
    with pytest.raises(TypeError) as info:
        trace.emit(0, 0, "", "x", ok=1, bad=value)
    assert str(info.value) == f"trace details hold ints, strings, bools, None and tuples; got {message}"
    assert trace.records == []


def test_list_details_are_stored_as_tuples():
    """A list detail becomes a tuple, so a record stays immutable and hashable."""
    rec = Trace().emit(0, 0, "", "x", args=[1, [2, 3]])
    assert rec.details == (("args", (1, (2, 3))),)
    assert hash(rec) == hash(TraceRecord(0, 0, "", "x", (("args", (1, (2, 3))),)))


# -- files and digests --------------------------------------------------------------------------------


def test_write_then_read_gives_the_same_trace(tmp_path):
    """Trace.write / Trace.read round-trip header and records byte for byte."""
    trace = _small_trace()
    path = tmp_path / "run.jsonl"
    trace.write(path)
    assert path.read_bytes() == trace.to_jsonl().encode()
    back = Trace.read(path)
    assert (back.header, back.records) == (trace.header, trace.records)
    assert back.digest() == trace.digest()


def test_reading_an_empty_file_is_a_named_error(tmp_path):
    """An empty trace file has no header: ValueError naming the file."""
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty trace file$"):
        Trace.read(path)


def test_digest_is_the_sha256_of_the_jsonl_bytes():
    """digest() hashes exactly what to_jsonl() writes."""
    trace = _small_trace()
    assert trace.digest() == hashlib.sha256(trace.to_jsonl().encode()).hexdigest()


def _fifo_run(seed: int = 0, iterations: int = 500):
    sim = spin_sim(Fifo2LS(), 2, seed=seed, a=(iterations, 1), b=(iterations, 2))
    sim.run()
    return sim.trace


def test_digest_is_equal_for_equal_runs():
    """The same scenario and seed run twice: same digest, same bytes."""
    one, two = _fifo_run(), _fifo_run()
    assert one.to_jsonl() == two.to_jsonl()
    assert one.digest() == two.digest()


def test_digest_differs_for_another_seed_or_another_scenario():
    """The seed is in the header, so even identical records hash differently; so does a changed scenario."""
    base, reseeded, longer = _fifo_run(), _fifo_run(seed=1), _fifo_run(iterations=501)
    assert base.records == reseeded.records  # this 2LS never draws from the RNG
    assert len({base.digest(), reseeded.digest(), longer.digest()}) == 3


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    """Trace.write replaces the file whole: a write that fails midway leaves the old file and no temporary."""
    path = tmp_path / "t.jsonl"
    trace = Trace({"seed": 1})
    trace.add(0, 0, "a", "run", (("how", "run_uthread"),))
    trace.write(path)
    before = path.read_text(encoding="utf-8")
    broken = Trace({"seed": 2})
    broken.add(5, 0, "a", "run", (("how", object()),))  # not JSON: the write fails while writing
    with pytest.raises(TypeError):
        broken.write(path)
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]
