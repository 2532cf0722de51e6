"""`akaros-sim sweep`: every combination of scenarios, 2LSes, overrides and seeds, one CSV row a run.

The runs are the cartesian product, in this order: scenario, 2LS (`--sched`),
each `--set KEY=V1,V2` key's values, seed.  Each is `load_scenario(path,
overrides)` built with the trace off, run, its metrics and expectation verdict
turned into a row.  Rows are written in product order whatever executes them
(local processes, or Dask), so the same options give the same bytes; a sweep
resumed on its own output runs only the rows missing from it.  docs/experiments.md
tells the whole workflow.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import importlib.util
import io
import itertools
import math
import os
import statistics
import sys
from pathlib import Path

import attrs

from akaros_sim import __version__
from akaros_sim.tools.shipped import find_scenario

__all__ = ["RESULT_COLUMNS", "Executor", "SweepError", "Task", "add_parser", "main", "run_one", "summary_rows", "t_quantile"]

_DISTS = ("turnaround", "response", "ready_wait")
RESULT_COLUMNS = (
    "end", "exit_status", "invariants", "expectations", "unchecked", "makespan_ns", "throughput", "fairness",
    *(f"{d}_{s}_ns" for d in _DISTS for s in ("mean", "p50", "p90", "p99")),
    "run_total_ns", "uthreads", "exited", "time_ns", "insns",
)  # fmt: skip
# The summary's figures: (column, title, digits after the point).
SUMMARY = (("makespan_ns", "makespan ns", 0), ("turnaround_mean_ns", "turnaround ns", 0),
           ("response_mean_ns", "response ns", 0), ("fairness", "fairness", 3))  # fmt: skip
# Student's t, 0.975 quantile (two-sided 95%), for 1..30 degrees of freedom; the normal's beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


class SweepError(ValueError):
    """Bad sweep input (one line, exit status 2)."""


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (the half-width factor of a 95% CI)."""
    if df < 1:
        raise ValueError(f"t_quantile: expected df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960


@attrs.frozen
class Task:
    """One run: a scenario file, a 2LS (None: the scenario's), `--set` items, a seed (None: the scenario's)."""

    path: str
    sched: str | None
    sets: tuple[str, ...]
    seed: int | None
    full_checks: bool = False


def _fmt(value) -> str:
    """A CSV cell, the same bytes on every machine and executor."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".10g")
    return str(value)


def _verdict(checks) -> str:
    return "-" if not checks else "pass" if all(c.ok for c in checks) else "fail"


def run_one(task: Task) -> dict[str, str]:
    """Run one task; its result columns, formatted (runs in a worker process)."""
    # here, not at the top: `akaros-sim --help` need not load the scenario machinery
    from akaros_sim.tools.expect import check_expectations
    from akaros_sim.tools.scenario import build, load_scenario, parse_overrides

    sets = list(task.sets) + ([f"machine.seed={task.seed}"] if task.seed is not None else [])
    scenario = load_scenario(task.path, parse_overrides(sets, task.sched))
    exp = scenario.expect
    unchecked = 0
    if not task.full_checks:  # no trace: what counts or orders records cannot be checked
        schedule = exp.schedule
        unchecked = len(exp.counts) + len(exp.order)
        if schedule is not None:
            unchecked += len(schedule.counts) + len(schedule.order)
            schedule = attrs.evolve(schedule, counts=(), order=())
        traced = [a for a in exp.always if a.matcher is not None]  # an always over trace records, too
        unchecked += len(traced)
        exp = attrs.evolve(exp, counts=(), order=(), schedule=schedule,
                           always=tuple(a for a in exp.always if a.matcher is None))  # fmt: skip
    sim = build(scenario, trace=task.full_checks)
    try:
        result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return {"end": f"error: {type(exc).__name__}", **{c: "" for c in RESULT_COLUMNS[1:]}}
    m = result.metrics
    row = {
        "end": result.end.name.lower(), "exit_status": result.exit_status,
        "invariants": _verdict(check_expectations(exp, sim, result, schedule=False)),
        "expectations": _verdict(check_expectations(exp, sim, result)), "unchecked": unchecked,
        "makespan_ns": m.makespan_ns, "throughput": m.throughput, "fairness": m.fairness,
    }  # fmt: skip
    for name in _DISTS:
        d = getattr(m, name)
        row.update({f"{name}_mean_ns": d.mean, f"{name}_p50_ns": d.p50, f"{name}_p90_ns": d.p90,
                    f"{name}_p99_ns": d.p99})
    row.update(run_total_ns=sum(u.run_ns for u in m.uthreads), uthreads=len(m.uthreads), exited=m.exited,
               time_ns=result.time_ns, insns=result.insns)  # fmt: skip
    return {k: _fmt(v) for k, v in row.items()}


# -- the plan -------------------------------------------------------------------------------------------


@attrs.frozen
class Sweep:
    """The product to run, with its option columns and the comment lines that identify it."""

    columns: tuple[str, ...]  # option columns, then RESULT_COLUMNS
    keys: tuple[tuple[str, ...], ...]  # each run's option values, in product order
    tasks: tuple[Task, ...]
    comments: tuple[str, ...]
    nopts: int


def _split_values(text: str) -> list[str]:
    """V1,V2,... split at the commas outside brackets and quotes (a value is TOML: [1, 2] is one)."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def _seeds(args) -> list[int] | None:
    if args.seeds is not None and args.seed_list is not None:
        raise SweepError("give --seeds N or --seed-list A,B,..., not both")
    if args.seed_list is not None:
        try:
            seeds = [int(s, 0) for s in args.seed_list.split(",")]
        except ValueError:
            raise SweepError(f"--seed-list {args.seed_list!r}: expected integers separated by commas") from None
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"--seed-list {args.seed_list!r}: a seed is repeated")
        return seeds
    return list(range(1, args.seeds + 1)) if args.seeds is not None else None


def plan_sweep(args) -> Sweep:
    """Validate every scenario x 2LS x --set combination (not the seeds) and lay out the product."""
    from akaros_sim.tools.scenario import ScenarioError, load_scenario, parse_overrides

    sets: list[tuple[str, list[str]]] = []
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise SweepError(f"--set {item!r}: expected KEY=V1,V2,... such as machine.vcores=1,2")
        values = _split_values(raw)
        if "" in values or len(set(values)) != len(values):
            raise SweepError(f"--set {item!r}: expected distinct, non-empty values separated by commas")
        if key.strip() in {k for k, _ in sets}:
            raise SweepError(f"--set {key.strip()}: given twice (put every value in one --set)")
        sets.append((key.strip(), values))
    seeds = _seeds(args)
    scheds = args.sched or [None]
    keys, tasks, digests = [], [], []
    for arg in args.scenarios:
        path = find_scenario(arg)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise SweepError(f"{arg}: cannot read the scenario: {exc.strerror or exc}") from None
        digests.append(f"# scenario {path.name} sha256:{hashlib.sha256(text).hexdigest()[:16]}")
        for sched in scheds:
            for combo in itertools.product(*(values for _, values in sets)):
                items = tuple(f"{k}={v}" for (k, _), v in zip(sets, combo, strict=True))
                try:
                    loaded = load_scenario(path, parse_overrides(items, sched))
                except ScenarioError as exc:
                    raise SweepError(str(exc)) from None
                for seed in seeds or [None]:
                    keys.append((path.stem, loaded.scheduler, *combo, str(loaded.seed if seed is None else seed)))
                    tasks.append(Task(str(path.resolve()), sched, items, seed, args.full_checks))
    options = [*args.scenarios, *(f"--sched {s}" for s in args.sched),
               *(f"--set {k}={','.join(v)}" for k, v in sets)]  # fmt: skip
    if seeds is not None:
        options.append(f"--seed-list {','.join(map(str, seeds))}")
    if args.full_checks:
        options.append("--full-checks")
    comments = (f"# akaros-sim sweep {' '.join(options)}", f"# version {__version__}", *digests)
    opt_cols = ("scenario", "sched", *(k for k, _ in sets), "seed")
    if len(set(opt_cols)) != len(opt_cols):
        raise SweepError(f"--set {sets[0][0]}: a key named like an option column (scenario, sched, seed)")
    return Sweep((*opt_cols, *RESULT_COLUMNS), tuple(keys), tuple(tasks), comments, len(opt_cols))


# -- the output file ------------------------------------------------------------------------------------


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def read_existing(path: Path, sweep: Sweep) -> dict[tuple[str, ...], list[str]]:
    """The rows already in a CSV made by this same sweep, by option values; SweepError if another made it."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):  # a run cut short mid-line: that line was never finished
        text = text[: text.rfind("\n") + 1]
    lines = text.splitlines()
    comments = [line for line in lines if line.startswith("#")]
    if tuple(comments) != sweep.comments:
        theirs = next((c for c, o in zip(comments, sweep.comments, strict=False) if c != o), None) or "(none)"
        raise SweepError(f"{path}: made by another sweep or version ({theirs!r}); use another --out or remove it")
    body = list(csv.reader(line for line in lines if not line.startswith("#")))
    if not body or tuple(body[0]) != sweep.columns:
        raise SweepError(f"{path}: its header row is not this sweep's columns; use another --out or remove it")
    return {tuple(r[: sweep.nopts]): r for r in body[1:] if len(r) == len(sweep.columns)}


class CsvOut:
    """Appends rows as they come (in product order among themselves); sorted into product order at the end."""

    def __init__(self, path: Path, sweep: Sweep, existing: dict) -> None:
        self.path, self.sweep, self.existing = path, sweep, existing
        order = {k: i for i, k in enumerate(sweep.keys)}
        have = [order.get(k, len(order)) for k in existing]
        self.in_order = have == list(range(len(have)))  # a prefix of the product: appending keeps the order
        if not existing:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write("".join(c + "\n" for c in sweep.comments) + _csv_line(sweep.columns))
        elif path.read_bytes()[-1:] != b"\n":
            with open(path, "r+b") as f:  # drop a line a killed sweep left half-written
                data = f.read()
                f.seek(data.rfind(b"\n") + 1)
                f.truncate()
        self.file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by finish()

    def add(self, values: list[str]) -> None:
        self.file.write(_csv_line(values))
        self.file.flush()

    def finish(self, rows: list[list[str]]) -> None:
        self.file.close()
        if self.in_order:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("".join(c + "\n" for c in self.sweep.comments) + _csv_line(self.sweep.columns))
            f.write("".join(_csv_line(r) for r in rows))
        os.replace(tmp, self.path)


def _parquet_existing(path: Path, sweep: Sweep) -> dict:
    import pyarrow.parquet as pq

    if not path.is_file():
        return {}
    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(b"akaros_sim_sweep", b"").decode()
    if tuple(meta.splitlines()) != sweep.comments or tuple(table.column_names) != sweep.columns:
        raise SweepError(f"{path}: made by another sweep or version; use another --out or remove it")
    cols = [table.column(c).to_pylist() for c in sweep.columns]
    rows = [[_fmt(v) for v in r] for r in zip(*cols, strict=True)]
    return {tuple(r[: sweep.nopts]): r for r in rows}


def _write_parquet(path: Path, sweep: Sweep, rows: list[list[str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {c: [_typed(r[i]) if i >= sweep.nopts or c == "seed" else r[i] for r in rows]
            for i, c in enumerate(sweep.columns)}  # fmt: skip
    table = pa.table(data).replace_schema_metadata({"akaros_sim_sweep": "\n".join(sweep.comments)})
    pq.write_table(table, path)


def _typed(cell: str):
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


# -- executing ------------------------------------------------------------------------------------------


def _execute(todo: list[tuple[int, Task]], args, on_done) -> None:
    """Run the tasks; on_done(index, result) in any order (the caller restores product order)."""
    with Executor(args.jobs, args.dask) as executor:
        executor.run(run_one, todo, on_done)


def need_distributed(dask: str | None) -> None:
    """SweepError unless dask.distributed is installed, when `dask` asks for it."""
    if dask is not None and importlib.util.find_spec("distributed") is None:
        raise SweepError("--dask needs dask.distributed (pip install 'akaros-sim[experiments]')")


class Executor:
    """Runs fn(item) for batches of items: in this process (jobs 1), on `jobs` local processes, or on Dask
    (an ADDRESS, or "local": a LocalCluster of `jobs` processes).  The pool or client lives from __enter__
    to __exit__, so that a caller submitting batch after batch (`akaros-sim explore`) starts it once."""

    def __init__(self, jobs: int, dask: str | None = None) -> None:
        need_distributed(dask)
        self.jobs, self.dask = jobs, dask
        self._pool = self._client = self._cluster = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def run(self, fn, todo: list[tuple[int, object]], on_done) -> None:
        """fn(item) for each (index, item); on_done(index, result) as each finishes, in any order."""
        if self.dask is not None:
            from dask.distributed import Client, LocalCluster, as_completed

            if self._client is None:
                if self.dask == "local":
                    self._cluster = LocalCluster(n_workers=self.jobs, threads_per_worker=1, processes=True,
                                                 dashboard_address=None)  # fmt: skip
                self._client = Client(self._cluster if self._cluster is not None else self.dask)
            futures = {self._client.submit(fn, item, pure=False): i for i, item in todo}
            for fut in as_completed(futures):
                on_done(futures[fut], fut.result())
            return
        if self.jobs == 1 or (len(todo) <= 1 and self._pool is None):
            for i, item in todo:
                on_done(i, fn(item))
            return
        import concurrent.futures
        import multiprocessing

        if self._pool is None:  # spawn, not fork: the parent holds Unicorn and greenlet state a fork would copy half-made
            self._pool = concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = {self._pool.submit(fn, item): i for i, item in todo}
        for fut in concurrent.futures.as_completed(futures):
            on_done(futures[fut], fut.result())


class _Progress:
    """A rich progress bar on a terminal's stderr, else one plain line per finished run."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.bar = None
        if sys.stderr.isatty() and importlib.util.find_spec("rich") is not None:  # rich: the experiments extra
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress("sweep", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))  # fmt: skip
            self.task = self.bar.add_task("sweep", total=total, completed=done)
            self.bar.start()

    def step(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        else:
            print(f"sweep: [{self.done}/{self.total}] {label}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# -- the summary ----------------------------------------------------------------------------------------


def summary_rows(columns, rows, nopts: int) -> tuple[list[str], list[list[str]]]:
    """Mean and 95% CI (t over seeds) of the SUMMARY figures, one row per option combination but the seed."""
    group_cols = list(columns[: nopts - 1])
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[: nopts - 1]), []).append(r)
    head = [*group_cols, "runs", *(title for _, title, _ in SUMMARY)]
    out = []
    for key, members in groups.items():
        cells = [*key, str(len(members))]
        for col, _, digits in SUMMARY:
            i = columns.index(col)
            xs = [float(r[i]) for r in members if r[i] != ""]
            cells.append(_mean_ci(xs, digits))
        out.append(cells)
    return head, out


def _mean_ci(xs: list[float], digits: int) -> str:
    if not xs:
        return "-"
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{mean:,.{digits}f}"
    half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{mean:,.{digits}f} ± {half:,.{digits}f}"


def format_table(head: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table: text columns left, figures right; the same bytes wherever it is printed."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    figures = {i for i, h in enumerate(head) if h == "runs" or h.endswith(("ns", "fairness"))}

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in figures else c.ljust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()  # fmt: skip

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _print_summary(head, rows) -> None:
    title = "mean ± 95% confidence interval over seeds (t distribution)"
    if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in head:
            table.add_column(h, justify="right" if h == "runs" or h.endswith(("ns", "fairness")) else "left")
        for r in rows:
            table.add_row(*r)
        Console().print(table)
        return
    print(f"summary: {title}")
    print(format_table(head, rows))


# -- the verb -------------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        return _sweep(args)
    except SweepError as exc:
        print(f"akaros-sim: {exc}", file=sys.stderr)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    out = Path(args.out)
    parquet = out.suffix == ".parquet"
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise SweepError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow), or use a .csv")
    need_distributed(args.dask)  # before anything is written
    sweep = plan_sweep(args)
    existing = _parquet_existing(out, sweep) if parquet else read_existing(out, sweep)
    try:
        writer = None if parquet else CsvOut(out, sweep, existing)
        if parquet:
            open(out, "ab").close()  # a path we cannot write fails now, not after the runs
    except OSError as exc:
        raise SweepError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    todo = [(i, t) for i, (k, t) in enumerate(zip(sweep.keys, sweep.tasks, strict=True)) if k not in existing]
    total = len(sweep.tasks)
    where = f"Dask at {args.dask}" if args.dask is not None else f"{min(args.jobs, max(1, len(todo)))} process(es)"
    print(f"sweep: {total} runs, {total - len(todo)} already in {out}, {len(todo)} to run on {where}", file=sys.stderr)
    results: dict[int, list[str]] = {}
    pending = [i for i, _ in todo]
    progress = _Progress(total, total - len(todo))

    def on_done(i: int, result: dict) -> None:
        results[i] = [*sweep.keys[i], *(result[c] for c in RESULT_COLUMNS)]
        progress.step(" ".join(sweep.keys[i]) + f": {result['end']}")
        while pending and pending[0] in results and writer is not None:  # product order, whatever finishes first
            writer.add(results[pending.pop(0)])

    try:
        _execute(todo, args, on_done)
    finally:
        progress.close()
    rows = [results[i] if i in results else existing[k] for i, k in enumerate(sweep.keys)]
    planned = set(sweep.keys)
    rows += [r for k, r in existing.items() if k not in planned]  # rows of no run of this sweep: kept, last
    if parquet:
        _write_parquet(out, sweep, rows)
    else:
        writer.finish(rows)
    print(f"sweep: wrote {out}", file=sys.stderr)
    _print_summary(*summary_rows(sweep.columns, rows, sweep.nopts))
    if args.plots is not None:
        _plots(rows, sweep, Path(args.plots))
    return 0


def _plots(rows, sweep: Sweep, outdir: Path) -> None:
    """Hand the rows to akaros_sim.tools.plots.sweep_plots, when that module has one."""
    try:  # another module's business: looked up when asked for, never required
        fn = getattr(importlib.import_module("akaros_sim.tools.plots"), "sweep_plots", None)
    except ImportError:
        fn = None
    if fn is None:
        print("sweep: plots are unavailable (akaros_sim.tools.plots has no sweep_plots); none drawn", file=sys.stderr)
        return
    outdir.mkdir(parents=True, exist_ok=True)
    typed = [{c: (v if i < sweep.nopts - 1 else _typed(v)) for i, (c, v) in enumerate(zip(sweep.columns, r, strict=True))}
             for r in rows]  # fmt: skip
    fn(typed, outdir)
    print(f"sweep: plots in {outdir}", file=sys.stderr)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_parser(sub, common) -> argparse.ArgumentParser:
    """The `sweep` verb on the CLI's subparsers."""
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="run scenarios x 2LSes x overrides x seeds in parallel into a CSV, with a summary table",
        description=(
            "Run every combination of SCENARIOs, 2LSes (--sched, repeatable), the values of each --set "
            "KEY=V1,V2 and seeds, with the trace off, in parallel, and write one CSV row per run (the options, "
            "the end, the expectations' verdict, the metrics of docs/metrics.md) in a deterministic order, led "
            "by # lines naming the sweep and the version. Rows already in --out are not run again. Prints a "
            "table of means with 95%% confidence intervals over the seeds. Exit status: 0 once written, 2 for "
            "bad input (docs/experiments.md)."
        ),
    )
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files, or names of shipped ones")
    p.add_argument("--sched", action="append", default=[], metavar="NAME",
                   help="a 2LS to run each scenario under (repeatable; default: each scenario's own)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                   help="a scenario key and the values to sweep, e.g. machine.vcores=1,2 (repeatable)")  # fmt: skip
    p.add_argument("--seeds", type=_jobs, metavar="N", help="run seeds 1..N (default: each scenario's own seed)")
    p.add_argument("--seed-list", metavar="A,B,...", help="run these seeds")
    p.add_argument("--out", required=True, metavar="FILE", help="the CSV (or .parquet, with pyarrow) to write or complete")
    p.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes (default: the CPU count)")  # fmt: skip
    p.add_argument("--dask", metavar="ADDRESS|local",
                   help="run on a Dask scheduler at ADDRESS, or on a local cluster of --jobs processes")  # fmt: skip
    p.add_argument("--full-checks", action="store_true",
                   help="keep the trace so that counts and order expectations are checked too (slower)")  # fmt: skip
    p.add_argument("--plots", metavar="DIR", help="draw plots of the results into DIR (akaros_sim.tools.plots)")
    p.set_defaults(func=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m akaros_sim.tools.sweep ...`, the same as `akaros-sim sweep ...`."""
    parser = argparse.ArgumentParser(prog="akaros-sim")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="verb", required=True)
    add_parser(sub, common)
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
