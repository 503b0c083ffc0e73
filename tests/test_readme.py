"""The README's Python code runs as written (issue 14): every ```python block is extracted
from README.md and executed, in order, in one namespace, in a temporary folder.

To stay fast, ``taskrel.load`` is replaced by a loader of a small synthetic task set (the
name and options the README passes are still checked against the real loader's signature,
so a misspelt dataset or option fails here) and the default number of training epochs is
lowered to 3; everything else is the real API.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskrel
from taskrel.data import DATASETS, load
from taskrel.data.taskset import TaskSet
from taskrel.training.trainer import TrainConfig
from taskrel.validation import check_options

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_block_extraction() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.fixture
def few_epochs() -> Iterator[None]:
    """``TrainConfig()`` trains for 3 epochs inside the test (restored afterwards)."""
    field = TrainConfig.model_fields["epochs"]
    before = field.default
    field.default = 3
    TrainConfig.model_rebuild(force=True)
    try:
        yield
    finally:
        field.default = before
        TrainConfig.model_rebuild(force=True)


def test_readme_python_code_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    few_epochs: None,
) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    calls: list[tuple[str, dict[str, Any]]] = []

    def small_load(name: str, **options: Any) -> TaskSet:
        assert name in DATASETS, f"README loads {name!r}, not a built-in dataset"
        info = DATASETS[name]
        module, function = info.loader.split(":")
        loader = getattr(importlib.import_module(module), function)
        check_options(f"README load({name!r})", loader, options, skip=dict(info.options))
        calls.append((name, options))
        small = {k: v for k, v in options.items() if k in ("seed",)}
        return load("synthetic", n_per_task=30, n_features=4, clusters=1, n_unrelated=0, **small)

    monkeypatch.setattr(taskrel, "load", small_load)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert calls, "the README's code never loads a dataset"
    printed = capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    result = namespace.get("R")
    if isinstance(result, taskrel.Relatedness):  # the relatedness example: its outputs exist
        assert result.matrix.shape == (len(result.task_names), len(result.task_names))
        assert "mtif.png" in written
        assert any(name.startswith("mtif") and name != "mtif.png" for name in written)
        assert "|" in printed  # the markdown table was printed
