"""Run one repetition of a benchmark in a fresh Python process.

A benchmark that runs all its repetitions in one process measures a process
that grows: whatever a run leaves behind (simulations kept alive by cycles
or live greenlets, Unicorn instances, trace records) makes the later
repetitions slower and their memory figures larger.  So each repetition runs
in a new interpreter started on the benchmark's own file:

    # in the benchmark
    def repetition(n: int) -> dict: ...          # JSON in, JSON out

    def main():
        if serve({"repetition": repetition}):     # this process is a child: it ran the task
            return
        ...
        for _ in range(args.repeat):
            samples.append(fresh(__file__, "repetition", n=args.n))

The child runs the named task with the keyword arguments and prints its
result as one JSON line, the last on stdout; the parent reads it back.  A
failing child fails the benchmark with the child's stderr.

What every benchmark prints is here too.  Timing is CPU time of the
measuring process (`cpu_ns`, time.process_time_ns): what the simulator
costs, not what other programs on the machine cost it.  Each figure is
measured once per repetition and printed as the min and the median over the
repetitions (`Figures`); ratios are computed from medians:

    table = Figures(repetitions=5)
    table.header()
    table.row("raw greenlet round trip", samples_us, "us")
    table.value("trace on / trace off", median(on) / median(off))
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

FLAG = "--one"
cpu_ns = time.process_time_ns  # the benchmarks' clock


def fresh(script: str, task: str, timeout: float | None = None, **kwargs: Any) -> Any:
    """task(**kwargs), run by `script` in a new interpreter; its JSON result."""
    cmd = [sys.executable, script, FLAG, task, json.dumps(kwargs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{script}: {task}({kwargs}) did not finish within {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{script}: {task}({kwargs}) failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(lines[-1])


def serve(tasks: dict[str, Callable[..., Any]]) -> bool:
    """In a process started by fresh(): run the task it names, print the JSON result, return True.

    Otherwise (the benchmark run by hand) return False and do nothing.
    """
    if len(sys.argv) < 2 or sys.argv[1] != FLAG:
        return False
    _, _, task, kwargs = sys.argv
    result = tasks[task](**json.loads(kwargs))
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return True


# -- reporting ---------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


class Figures:
    """Aligned lines: a label, then the min and the median of a figure's samples, a unit and a note."""

    def __init__(self, repetitions: int, width: int = 56, fmt: str = "10.2f") -> None:
        self.repetitions = repetitions
        self.width = width
        self.fmt = fmt
        self.cols = int(fmt.split(".")[0])

    def header(self) -> None:
        """The column heads: which statistic each number column is."""
        print(f"{'':<{self.width}} {'min':>{self.cols}} {'median':>{self.cols}}   "
              f"(of {self.repetitions} repetitions)")  # fmt: skip

    def row(self, label: str, samples: Iterable[float], unit: str, fmt: str | None = None, note: str = "") -> None:
        """One figure: the min and the median of its samples (already in `unit`)."""
        values = list(samples)
        f = fmt or self.fmt
        text = f"{label + ':':<{self.width}} {min(values):{f}} {median(values):{f}} {unit}"
        print(f"{text}  {note}" if note else text)

    def value(self, label: str, value: float, fmt: str | None = None, note: str = "") -> None:
        """A figure computed from medians (a ratio): one number, in the median column."""
        f = fmt or self.fmt
        text = f"{label + ':':<{self.width}} {'':>{self.cols}} {value:{f}}"
        print(f"{text}  {note}" if note else text)
