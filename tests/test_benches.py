"""Every benchmark still runs: each at a tiny size, ending with its summary line.

Nothing here is timed (the figures of a shared machine mean nothing in a
test); it only keeps the benches from breaking unnoticed, as bench_compute's
check of uthread time once did when the runtime's definition changed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# (script and tiny-size arguments, the pattern of its last line)
RUNS = [
    (["bench_switch.py", "--yields", "20", "--slices", "2", "--uthreads", "50"], r"switch ratio: \d+\.\d\d"),
    (["bench_fault.py", "--faults", "50"], r"fault ratio: \d+\.\d\d"),
    (["bench_cpu.py", "--slices", "2", "--faults", "50"], r"cpu ratio: \d+\.\d\d"),
    (["bench_compute.py", "--quick", "--calls", "2"], r"compute ratio: \d+\.\d\d"),
    (["bench_ras.py", "--increments", "200", "--mutex-increments", "50"], r"ras ratio: \d+\.\d\d"),
    (["fuzz.py", "--programs", "5", "--workers", "0"], r"fuzz: 5 programs, 0 crashes, 0 hangs"),
]


@pytest.mark.parametrize(("argv", "last"), RUNS, ids=[argv[0] for argv, _ in RUNS])
def test_bench_runs_and_ends_with_its_summary(argv, last):
    proc = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=300, cwd=BENCH.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines and re.fullmatch(last, lines[-1]), proc.stdout[-2000:]
