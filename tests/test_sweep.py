"""`akaros-sim sweep`: the product of runs, deterministic rows whatever the executor, resuming, the summary."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from akaros_sim.tools import sweep
from akaros_sim.tools.scenario import BUILTIN_SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
SCHEDS = [name for name in BUILTIN_SCHEDULERS if name != "thread0"]  # thread0 runs one thread only
SWEEP = ["workload_cpu", "workload_mutex", *(a for s in SCHEDS for a in ("--sched", s)),
         "--set", "machine.vcores=1,2", "--seed-list", "1,2"]  # fmt: skip
RUNS = 2 * len(SCHEDS) * 2 * 2


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "akaros_sim.tools.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=300)  # fmt: skip


def body(path: Path) -> list[list[str]]:
    """The header row and the rows of a sweep CSV (the # lines left out)."""
    return list(csv.reader(line for line in path.read_text().splitlines() if not line.startswith("#")))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The sweep on local worker processes, from the command line (stdout piped)."""
    out = tmp_path_factory.mktemp("sweep") / "local.csv"
    proc = cli("sweep", *SWEEP, "--out", out, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_the_sweep_is_the_product_in_order(local):
    out, _ = local
    assert len(SCHEDS) >= 2
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# akaros-sim sweep workload_cpu workload_mutex --sched pthread")
    assert lines[1] == f"# version {sweep.__version__}" and lines[2].startswith("# scenario workload_cpu.toml sha256:")
    head, *rows = body(out)
    assert head[:4] == ["scenario", "sched", "machine.vcores", "seed"] and head[4:] == list(sweep.RESULT_COLUMNS)
    want = [[sc, s, v, seed] for sc in ("workload_cpu", "workload_mutex") for s in SCHEDS for v in "12" for seed in "12"]
    assert [r[:4] for r in rows] == want and len(rows) == RUNS
    col = {name: i for i, name in enumerate(head)}
    for r in rows:
        assert (r[col["end"]], r[col["invariants"]], r[col["exit_status"]]) == ("all_exited", "pass", "")  # no exit call: no status
        assert r[col["exited"]] == r[col["uthreads"]] and float(r[col["fairness"]]) <= 1
        assert int(r[col["unchecked"]]) >= 3  # the counts expectations need the trace, which is off
    by_vcores = {v: {r[col["makespan_ns"]] for r in rows if r[col["machine.vcores"]] == v} for v in "12"}
    assert by_vcores["1"] != by_vcores["2"]


def test_summary_has_a_row_per_2ls_and_is_deterministic_when_piped(local, tmp_path):
    out, proc = local
    lines = proc.stdout.splitlines()
    assert lines[0] == "summary: mean ± 95% confidence interval over seeds (t distribution)"
    assert lines[1].split() == ["scenario", "sched", "machine.vcores", "runs", "makespan", "ns", "turnaround", "ns",
                                "response", "ns", "fairness"]  # fmt: skip
    rows = [line.split() for line in lines[3:]]
    assert len(rows) == 2 * len(SCHEDS) * 2 and {r[1] for r in rows} == set(SCHEDS)
    assert all(r[3] == "2" and "±" in r for r in rows)
    again = cli("sweep", *SWEEP, "--out", out, "--jobs", "2")  # everything already there: nothing runs
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert f"{RUNS} already in" in again.stderr


def test_dask_local_cluster_gives_the_same_bytes(local, tmp_path):
    pytest.importorskip("distributed")
    out, _ = local
    other = tmp_path / "dask.csv"
    proc = cli("sweep", *SWEEP, "--out", other, "--jobs", "2", "--dask", "local")
    assert proc.returncode == 0, proc.stderr
    assert other.read_bytes() == out.read_bytes()


def test_resuming_runs_only_the_missing_rows(local, tmp_path, monkeypatch, capsys):
    out, _ = local
    lines = out.read_text().splitlines(keepends=True)
    comments = [line for line in lines if line.startswith("#")]
    data = lines[len(comments) :]
    half = tmp_path / "half.csv"
    # rows 0..9, then rows 15..19 (a hole), then a line cut short
    half.write_text("".join(comments + data[:11] + data[16:21]) + data[21][:7])
    ran = []
    real = sweep.run_one
    monkeypatch.setattr(sweep, "run_one", lambda task: ran.append(task) or real(task))
    assert sweep.main([*SWEEP, "--out", str(half), "--jobs", "1"]) == 0
    assert len(ran) == RUNS - 15
    assert half.read_bytes() == out.read_bytes()  # completed, and back in product order
    assert f"{RUNS} runs, 15 already in" in capsys.readouterr().err


def test_another_sweeps_file_is_not_completed(local, tmp_path):
    out, _ = local
    other = tmp_path / "other.csv"
    other.write_text(out.read_text().replace("--seed-list 1,2", "--seed-list 1,3"))
    proc = cli("sweep", *SWEEP, "--out", other)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "made by another sweep or version" in proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (["nosuch", "--out", "x.csv"], "nosuch: cannot read the scenario"),
    (["workload_cpu", "--set", "vcores", "--out", "x.csv"], "--set 'vcores': expected KEY=V1,V2"),
    (["workload_cpu", "--set", "machine.vcores=1,0", "--out", "x.csv"], "machine.vcores: expected an integer >= 1"),
    (["workload_cpu", "--sched", "nosuch", "--out", "x.csv"], "scheduler.name: unknown 2LS 'nosuch'"),
    (["workload_cpu", "--seeds", "2", "--seed-list", "1", "--out", "x.csv"], "not both"),
    (["workload_cpu", "--out", "no/such/dir/x.csv"], "cannot write"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args, fragment, tmp_path):
    proc = cli("sweep", *[str(ROOT / "scenarios" / "workload_cpu.toml") if a == "workload_cpu" else a for a in args],
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_plots_go_to_the_plots_module_or_are_unavailable(tmp_path, monkeypatch, capsys):
    got = []
    fake = type(sys)("akaros_sim.tools.plots")
    fake.sweep_plots = lambda rows, outdir: got.append((rows, outdir))
    monkeypatch.setitem(sys.modules, "akaros_sim.tools.plots", fake)
    args = ["sweep", "workload_io", "--set", "machine.vcores=1", "--out", str(tmp_path / "p.csv"), "--jobs", "1"]
    assert sweep.main([*args[1:], "--plots", str(tmp_path / "figs")]) == 0
    (rows, outdir), = got
    assert outdir == tmp_path / "figs" and rows[0]["sched"] == "pthread" and isinstance(rows[0]["makespan_ns"], int)
    monkeypatch.setitem(sys.modules, "akaros_sim.tools.plots", type(sys)("akaros_sim.tools.plots"))
    assert sweep.main([*args[1:], "--plots", str(tmp_path / "figs")]) == 0
    assert "plots are unavailable" in capsys.readouterr().err


def test_t_quantiles_and_the_interval():
    assert sweep.t_quantile(1) == 12.706 and sweep.t_quantile(30) == 2.042 and sweep.t_quantile(31) == 1.96
    head, rows = sweep.summary_rows(("scenario", "sched", "seed", *sweep.RESULT_COLUMNS), [
        ["s", "a", "1", *([""] * 5), "100", "", "0.5", "10", *([""] * 16)],
        ["s", "a", "2", *([""] * 5), "200", "", "1.0", "20", *([""] * 16)],
    ], 3)  # fmt: skip
    # mean 150, sd 70.71, t(1) 12.706: half-width 12.706 * 70.71 / sqrt(2) = 635.3
    assert head[:3] == ["scenario", "sched", "runs"] and rows == [["s", "a", "2", "150 ± 635", "15 ± 64", "-",
                                                                   "0.750 ± 3.176"]]  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_output(tmp_path, local):
    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    assert sweep.main([*SWEEP[:2], "--sched", "pthread", "--set", "machine.vcores=1,2", "--seed-list", "1,2",
                 "--out", str(out), "--jobs", "1"]) == 0  # fmt: skip
    table = pq.read_table(out)
    assert table.num_rows == 8 and table.column("end").to_pylist() == ["all_exited"] * 8
