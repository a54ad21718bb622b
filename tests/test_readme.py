"""Keep the README true: every `bpfree` and benchmark command in it runs.

`make demo` and `make test` are run by CI (.ci/run). Benchmark commands are long; they run here
with cheap overrides appended (argparse keeps the last value of a repeated option), in a
temporary folder so committed results are not overwritten.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bpfree.data import DATASETS, locate
from bpfree.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
CHEAP = {
    "benchmarks/seeds.py": ["--seeds", "0", "--epochs", "1", "--train-samples", "600"],
    "benchmarks/throughput.py": ["--quick"],
    "benchmarks/memory_scaling.py": ["--quick"],
    "benchmarks/pipeline.py": [
        *("--dataset", "digits", "--model", "mlp_4x64", "--repeats", "1"),
        *("--rules", "mf,dfa:pipeline_error=stale,bp:pipeline_schedule=1f1b"),
    ],
    # The full benchmark, cut down to a pipeline check on the bundled 8x8 digits (CaFo-DFA's
    # 15 pretraining passes cut to 1, so 2 passes in total cover both of its phases).
    "compare": ["--seeds", "1", "--epochs", "2", "--dataset", "digits", "--train-samples", "300"],
    "cafo": ["--set", "cafo.dfa_epochs=1"],
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append(line[2:].split("  #")[0].strip())
    return commands


def test_readme_has_the_two_command_quick_start() -> None:
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make demo" in ci


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for all README commands, run in order (a report reads a compare's output)."""
    path = tmp_path_factory.mktemp("readme")
    (path / "benchmarks" / "results").mkdir(parents=True)
    return path


@pytest.mark.parametrize("command", [c for c in readme_commands() if not c.startswith("make ")])
def test_readme_command_runs(command: str, workdir: Path) -> None:
    if "fashion_mnist" in command and locate(DATASETS.get("fashion_mnist"))[0] is None:
        pytest.skip("Fashion-MNIST not installed here (apt-get install dataset-fashion-mnist)")
    argv = shlex.split(command)
    if argv[:2] == ["bpfree", "report"] and not (workdir / argv[2]).exists():
        pytest.skip(f"{argv[2]} was not made: the README's compare before it was skipped here")
    if argv[0] == "bpfree":
        argv = [sys.executable, "-m", "bpfree", *argv[1:]]
        if argv[3] == "compare" and "--train-samples" not in argv:
            argv += CHEAP["compare"]  # the full benchmark, cut down
            if "cafo" in argv[argv.index("--rules") + 1]:
                argv += CHEAP["cafo"]
    elif argv[0] == "python":
        script = argv[1]
        argv = [sys.executable, str(ROOT / script), *argv[2:], *CHEAP.get(script, [])]
    env = {**os.environ, "CI": "true"}
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "a README command should print something"


def test_readme_python_example_runs(workdir: Path) -> None:
    """The README's Python block, as written, in a fresh process."""
    if locate(DATASETS.get("fashion_mnist"))[0] is None:
        pytest.skip("Fashion-MNIST not installed here (apt-get install dataset-fashion-mnist)")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README shows the Python API"
    for code in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=workdir,
            env={**os.environ, "CI": "true"},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_readme_rule_table_lists_every_registered_rule() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Rules and models", 1)[1].split("\n\n", 2)[1]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert sorted(listed) == sorted(RULES.names())
    for name in listed:  # the native model column agrees with the rule's declaration
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        native = set(RULES.get(name).info.native.values())
        if not RULES.get(name).info.baseline:
            assert all(f"`{model}`" in row.rsplit("|", 2)[1] for model in native), row
