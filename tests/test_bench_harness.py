"""The benchmark harness's exit status: 0 after a finished run, 130 after an interrupt, and
every benchmark's ``main`` returns an exit status (``int`` or ``None``), never its figures
(``sys.exit`` of a dict prints the dict and exits with status 1)."""

from __future__ import annotations

import ast
import os
import signal
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def harness():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import _harness

        yield _harness
    finally:
        sys.path.remove(str(BENCH))


def _exit_status(harness, main) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as stop:
        harness.run_main(main)
    code = stop.value.code
    return 0 if code is None else code


def test_finished_run_exits_0_and_status_is_passed_on(harness) -> None:  # type: ignore[no-untyped-def]
    assert _exit_status(harness, lambda: None) == 0
    assert _exit_status(harness, lambda: 3) == 3


def test_sigterm_stops_a_benchmark_with_status_130(harness, capsys) -> None:  # type: ignore[no-untyped-def]
    def main() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the benchmark")

    before = signal.getsignal(signal.SIGTERM)
    assert _exit_status(harness, main) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_main_returns_an_exit_status(script: Path) -> None:
    tree = ast.parse(script.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{script.name}: no top-level main()"
    returns = mains[0].returns
    assert returns is not None, f"{script.name}: main() has no return annotation"
    assert ast.unparse(returns) in {"int", "None", "int | None"}, (
        f"{script.name}: main() returns {ast.unparse(returns)}; run_main passes it to sys.exit"
    )
    assert "run_main(main)" in script.read_text(), f"{script.name}: not run through run_main"
