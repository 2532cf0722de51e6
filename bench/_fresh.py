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
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

FLAG = "--one"


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
