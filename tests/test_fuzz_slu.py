"""Fuzz the SLU folder loader: any file contents give a valid TaskSet or a DataError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskrel.data.slu import load_slu_folder
from taskrel.data.taskset import PAD_TAG
from taskrel.errors import DataError

word = st.sampled_from(["show", "flights", "to", "boston", "", " ", "B-x", "O", "\t", "é"])
line = st.lists(word, min_size=0, max_size=5).map(" ".join)
text = st.lists(line, min_size=0, max_size=4).map("\n".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq_in=text, seq_out=text, label=text)
def test_slu_folder_loader_never_crashes(seq_in: str, seq_out: str, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "dev", "test"):
            folder = Path(tmp) / split
            folder.mkdir()
            (folder / "seq.in").write_text(seq_in)
            (folder / "seq.out").write_text(seq_out)
            (folder / "label").write_text(label)
        try:
            ts = load_slu_folder(Path(tmp))
        except DataError as err:
            assert str(err)
            return
    intent, slots = ts["intent"], ts["slots"]
    assert ts.shared_inputs and np.array_equal(intent.x, slots.x)
    # every real token has a tag and every padding position is masked
    assert np.array_equal(slots.x != 0, slots.y != PAD_TAG)
    assert intent.y.max() < intent.n_outputs and slots.y.max() < slots.n_outputs
