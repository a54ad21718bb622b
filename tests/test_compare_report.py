"""`bpfree compare` and `bpfree report`: the protocol, statistics, resume, and a real browser."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfree.cli import main
from bpfree.comparison import compare
from bpfree.comparison.plan import build_plan, native_model, parse_entries, protocol_fields
from bpfree.errors import ConfigError
from bpfree.reporting.plots import pareto_front
from bpfree.reporting.stats import paired_ci

TINY = dict(dataset="digits", seeds=2, epochs=2, models={"mf": "mlp_2x32"}, progress=False)


def test_paired_ci_matches_hand_computation() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302653; half-width 4.302653/sqrt(3)
    ci = paired_ci([91.0, 92.0, 93.0], [90.0, 90.0, 90.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(2.0 - half) and ci.high == pytest.approx(2.0 + half)
    one = paired_ci([90.0], [89.0])
    assert one.mean == 1.0 and one.low is None


def test_pareto_front() -> None:
    pts = [(1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (0.5, 70.0), (2.0, 83.0)]
    assert pareto_front(pts) == [(0.5, 70.0), (1.0, 80.0), (2.0, 85.0)]


def test_native_architectures() -> None:
    assert native_model("mf", "fashion_mnist") == "mlp_2x1000"
    assert native_model("mf", "cifar10") == "mlp_3x2000"
    assert native_model("ff", "mnist") == "mlp_4x2000"
    assert native_model("cafo", "cifar100") == "cnn_3block"


def test_plan_twins_share_every_protocol_setting() -> None:
    entries = parse_entries("mf,mf:schedule=sequential", "digits", {"mf": "mlp_2x32"})
    plan = build_plan(entries, "digits", [0, 1, 2], {"epochs": 4, "patience": 2})
    twins = {(r.config.model, r.config.seed): r for r in plan if r.is_baseline}
    rules = [r for r in plan if not r.is_baseline]
    assert len(rules) == 6 and len(twins) == 3  # one shared twin per (model, seed)
    for run in rules:
        twin = twins[(run.config.model, run.config.seed)]
        assert protocol_fields(run.config) == protocol_fields(twin.config)
        assert twin.config.rule == "bp"
    assert sorted({r.config.seed for r in plan}) == [0, 1, 2]


def test_bad_requests() -> None:
    with pytest.raises(ConfigError, match="did you mean: mf"):
        parse_entries("mff", "digits")
    with pytest.raises(ConfigError, match="twin already"):
        parse_entries("bp", "digits")
    with pytest.raises(ConfigError, match="distinct"):
        build_plan(parse_entries("mf", "digits"), "digits", [1, 1], {})


def test_compare_runs_protocol_and_report(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare(rules="mf", out=out, sets=["patience=3", "mf.lr=0.002"], **TINY)
    configs = {}
    for run in result.plan:
        cfg = json.loads((out / "runs" / run.key / "config.json").read_text())
        configs[run.key] = cfg
        res = json.loads((out / "runs" / run.key / "result.json").read_text())
        assert res["status"] == "completed"
    by_seed: dict[int, list[dict]] = {}
    for cfg in configs.values():
        by_seed.setdefault(cfg["seed"], []).append(cfg)
    for seed, pair in by_seed.items():
        rule = next(c for c in pair if c["rule"] == "mf")
        twin = next(c for c in pair if c["rule"] == "bp")
        # matched twin (the default): the rule's optimizer settings, its lr override included
        for key in ("lr", "optimizer", "weight_decay", "batch_size", "lr_cooldown"):
            assert rule["hparams"][key] == twin["hparams"][key], key
        assert rule["hparams"]["lr"] == 0.002 and twin["hparams"]["optimizer"] == "adam"
        for key in (
            "dataset",
            "model",
            "seed",
            "epochs",
            "patience",
            "min_delta",
            "monitor",
            "val_fraction",
            "data_seed",
            "train_samples",
        ):
            assert rule[key] == twin[key], key
        assert rule["seed"] == seed
    report = out / "report"
    rows = list(csv.DictReader((report / "table.csv").open()))
    assert [r["label"] for r in rows] == ["mf", "bp@mlp_2x32"]
    assert rows[0]["diff"] and rows[0]["diff_low"] and rows[0]["df"] == "1"
    assert rows[0]["tost"] in ("equivalent", "not equivalent", "inconclusive")
    assert rows[0]["data_passes"] == rows[1]["data_passes"] == "2.0"
    assert rows[0]["reverse_ad"] == "within_block" and rows[1]["weight_transport"] == "yes"
    md = (report / "table.md").read_text()
    assert "n/a" in md  # no energy counter on a CPU machine without RAPL: n/a, never 0
    assert "\\begin{tabular}" in (report / "table.tex").read_text()
    assert (report / "accuracy_vs_time.png").stat().st_size > 1000
    html = (report / "report.html").read_text()
    assert 'id="results"' in html and html.count("data:image/png;base64,") >= 3
    assert "Provenance" in html and "patience=3" in html


def test_rerun_with_other_options_is_refused(tmp_path: Path) -> None:
    compare(rules="mf", out=tmp_path / "c", report=False, **TINY)
    with pytest.raises(ConfigError, match="different comparison"):
        compare(rules="mf", out=tmp_path / "c", report=False, **{**TINY, "epochs": 3})


def test_comparison_written_by_an_earlier_version_continues(tmp_path: Path) -> None:
    """A manifest from before a setting existed (here lr_drops, at its default) plans the same
    runs: the comparison continues and reuses its finished runs; any real difference is refused."""
    out = tmp_path / "c"
    compare(rules="mf", out=out, report=False, **TINY)
    path = out / "compare.json"
    current = json.loads(path.read_text())
    older = json.loads(path.read_text())
    older["digest"] = "0123456789abcdef"  # what the older version's settings hashed to
    for run in older["runs"]:
        del run["config"]["hparams"]["lr_drops"]
        assert run["config"]["hparams"]["lr"] == 0.001
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert len(finished) == 4
    path.write_text(json.dumps(older))
    compare(rules="mf", out=out, report=False, **TINY)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == finished
    assert json.loads(path.read_text())["digest"] == current["digest"]  # rewritten as now

    def refused(change) -> None:
        stale = json.loads(json.dumps(older))
        change(stale)
        path.write_text(json.dumps(stale))
        with pytest.raises(ConfigError, match="different comparison"):
            compare(rules="mf", out=out, report=False, **TINY)

    refused(lambda m: m["runs"][0]["config"]["hparams"].update(lr=0.002))
    refused(lambda m: m["runs"][0]["config"]["hparams"].update(lr_drops="0.5"))
    refused(lambda m: m["runs"][0]["config"]["hparams"].update(retired=1))  # no default now
    refused(lambda m: m["runs"][0]["config"].update(patience=9))
    refused(lambda m: m["runs"].pop())
    refused(lambda m: m.update(seeds=[0, 2]))
    refused(lambda m: m.update(tuning={"n_trials": 2}))


def test_only_trains_the_chosen_rows_and_a_later_call_the_rest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    part = compare(rules="mf", out=out, report=False, only="mf", **TINY)
    assert [r.key for r in part.plan] == ["mf--mlp_2x32--s0", "mf--mlp_2x32--s1"]
    first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert sorted(first) == ["mf--mlp_2x32--s0", "mf--mlp_2x32--s1"]
    whole = compare(rules="mf", out=out, report=False, **TINY)  # the same comparison
    assert len(whole.plan) == 4 and all(r.status == "completed" for r in whole.results.values())
    for key, mtime in first.items():
        assert (out / "runs" / key / "result.json").stat().st_mtime_ns == mtime  # reused
    with pytest.raises(ConfigError, match="its rows: mf, bp@mlp_2x32"):
        compare(rules="mf", out=out, report=False, only="mf,ff", **TINY)
    code = main(["compare", "--rules", "mf", "--dataset", "digits", "--only", "bp", "--out", "o"])
    assert code == 2 and "'bp' is not a row of this comparison" in capsys.readouterr().err


def test_cli_compare_and_report(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "compare",
            "--rules",
            "mf",
            "--dataset",
            "digits",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--model",
            "mf=mlp_2x16",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| mf | mlp_2x16 | bp@mlp_2x16 | 1 / 0 / 0 |" in out and "report.html" in out
    assert main(["report", str(tmp_path / "c"), "--no-plots"]) == 0
    assert main(["report", str(tmp_path)]) == 2
    assert "not a comparison directory" in capsys.readouterr().err
    # One --set grammar: a key that is no trainer setting and no compared rule's is an error.
    bad = ["compare", "--rules", "mf", "--dataset", "digits", "--out", str(tmp_path / "d")]
    assert main([*bad, "--set", "lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "no compared rule has a setting 'lrr'" in err and "patience" in err
    assert main([*bad, "--set", "ff.lr=0.1"]) == 2
    assert "'ff' is not among the compared rules" in capsys.readouterr().err


def test_killed_compare_rerun_does_each_run_once(tmp_path: Path) -> None:
    out = tmp_path / "c"
    cmd = [
        sys.executable,
        "-m",
        "bpfree",
        "compare",
        "--rules",
        "mf",
        "--dataset",
        "digits",
        "--seeds",
        "2",
        "--epochs",
        "12",
        "--set",
        "patience=12",
        "--model",
        "mf=mlp_2x256",
        "--out",
        str(out),
        "--quiet",
        "--no-report",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "runs" / "mf--mlp_2x256--s0" / "result.json"
    second_ckpt = out / "runs" / "bp_at_mlp_2x256--mlp_2x256--s0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not second_ckpt.exists():  # the first run is done, the second is mid-way
        assert time.monotonic() < deadline and proc.poll() is None, "compare did not progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=30)
    stamp = first.stat().st_mtime_ns
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "[1/4] mf on mlp_2x256, seed 0: reused" in rerun.stderr
    assert first.stat().st_mtime_ns == stamp  # not trained again
    for run_dir in (out / "runs").iterdir():
        res = json.loads((run_dir / "result.json").read_text())
        assert res["status"] == "completed"
        epochs = [
            json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        assert epochs == list(range(1, 13)), run_dir.name  # each epoch once, in order


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_opens_in_a_real_browser(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    out = tmp_path / "cmp"
    compare(rules="mf", out=out, **{**TINY, "seeds": 1, "epochs": 1})
    page = (out / "report" / "report.html").read_text()
    # Probe appended to a copy: reports whether every embedded image decoded in the browser.
    probe = (
        "<script>window.addEventListener('load', () => { const bad = [...document.images]"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).length; console.log("
        "'PROBE images=' + document.images.length + ' broken=' + bad + ' rows=' + "
        "document.querySelectorAll('#results tbody tr').length); });</script>"
    )
    probed = out / "report" / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert any("PROBE images=" in line for line in console), proc.stderr[-2000:]
    probe_line = next(line for line in console if "PROBE" in line)
    assert "broken=0" in probe_line and "images=0" not in probe_line and "rows=2" in probe_line
    errors = [line for line in console if "PROBE" not in line]
    assert errors == [], errors
    assert 'id="results"' in proc.stdout


def test_compare_without_matplotlib_writes_tables_and_page(tmp_path: Path) -> None:
    """Installed without the report extra, compare still reports, and says what it skipped."""
    code = (
        "import importlib.util, sys\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n == 'matplotlib' else _find(n, *a)\n"
        "sys.modules['matplotlib'] = None\n"
        "from bpfree.cli import main\n"
        f"sys.exit(main(['compare', '--rules', 'mf', '--dataset', 'digits', '--seeds', '1',"
        f" '--epochs', '1', '--train-samples', '200', '--model', 'mf=mlp_2x8', '--quiet',"
        f" '--out', {str(tmp_path / 'c')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "figures skipped: matplotlib is not installed" in proc.stderr
    report = tmp_path / "c" / "report"
    assert (report / "table.md").exists() and not list(report.glob("*.png"))
    assert "pip install &#x27;bpfree[report]&#x27;" in (report / "report.html").read_text()


def test_a_run_interrupted_before_its_first_checkpoint_trains_again(tmp_path: Path) -> None:
    """Stopped before its first epoch ended, a run leaves an ``interrupted`` result and no
    checkpoint: a rerun of the comparison trains it (and says so), it is not "reused"."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "bpfree", "compare", "--rules", "mf", "--dataset", "digits"]
    cmd += ["--model", "mf=mlp_2x32", "--seeds", "1", "--epochs", "1", "--train-samples", "200"]
    cmd += ["--out", str(out), "--quiet", "--no-report"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0
    path = out / "runs" / "mf--mlp_2x32--s0" / "result.json"
    stopped = json.loads(path.read_text())
    stopped.update(status="interrupted", reason="interrupted by the user")
    path.write_text(json.dumps(stopped))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "[1/2] mf on mlp_2x32, seed 0: training" in rerun.stderr
    assert "[2/2] bp@mlp_2x32 on mlp_2x32, seed 0: reused" in rerun.stderr
    assert json.loads(path.read_text())["status"] == "completed"


def test_twin_note_names_what_the_own_twins_were_given() -> None:
    from bpfree.reporting.html import twin_note

    entry = {"label": "mf", "twin": "bp@m", "twin_hparams": {}}
    assert twin_note({"twin_mode": "own", "entries": [entry]}).endswith("(not matched to its rule)")
    given = {**entry, "twin_hparams": {"lr": 3e-4, "optimizer": "adam"}}
    note = twin_note({"twin_mode": "own", "entries": [given]})
    assert note.endswith("but for lr=0.0003, optimizer=adam (--set bp.KEY=VALUE)")
    assert twin_note({"twin_mode": "matched", "entries": [given]}).startswith("matched:")
