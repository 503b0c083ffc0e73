"""SLU loader: ATIS/SNIPS facts, shared encoding, UNK conventions, user folders."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from taskrel.data import load
from taskrel.data.slu import UNK, gold_tag_names, load_slu, load_slu_folder, unseen_class
from taskrel.data.taskset import PAD_TAG, TaskSet
from taskrel.errors import DataError


@pytest.fixture(scope="module")
def atis() -> TaskSet:
    return load_slu("atis")


@pytest.fixture(scope="module")
def snips() -> TaskSet:
    return load_slu("snips")


def _bundled_lines(name: str, split: str, file: str) -> list[str]:
    path = files("taskrel.data") / "files" / "slu" / name / split / file
    return path.read_text(encoding="utf-8").splitlines()


def test_atis_sizes_and_shared_inputs(atis: TaskSet) -> None:
    assert atis.names == ["intent", "slots"] and atis.shared_inputs
    intent, slots = atis
    assert atis.sizes()["intent"] == {"train": 4478, "val": 500, "test": 893}
    assert slots.x is intent.x and intent.x.dtype == np.int64
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(intent.indices(split), slots.indices(split))
    np.testing.assert_array_equal(intent.train_idx, np.arange(4478))
    np.testing.assert_array_equal(intent.test_idx, np.arange(4978, 5871))
    assert intent.x.shape == slots.y.shape == (5871, 46)  # longest ATIS utterance: 46 tokens


def test_atis_intent_conventions(atis: TaskSet) -> None:
    intents = atis.meta["intents"]
    assert len(intents) == 22 and intents[-1] == UNK  # 21 training intents + UNK
    assert sum("#" in i for i in intents) == 4  # multi-intent labels seen in training
    intent = atis["intent"]
    assert intent.labels == tuple(intents) and intent.n_outputs == 22
    unk = len(intents) - 1
    y_train, y_val, y_test = (intent.arrays(s)[1] for s in ("train", "val", "test"))
    assert not np.any(y_train == unk)
    assert int(np.sum(y_val == unk)) == atis.meta["unseen_val_intents"] == 1
    assert int(np.sum(y_test == unk)) == atis.meta["unseen_test_intents"] == 5
    assert atis.meta["unseen_labels"]["test"]["intents"] == [
        "atis_airfare#atis_flight",
        "atis_day_name",
        "atis_flight#atis_airline",
        "atis_flight_no#atis_airline",
    ]
    # a multi-intent test label seen in training keeps its own class
    labels = _bundled_lines("atis", "test", "label")
    seen_multi = [i for i, lab in enumerate(labels) if "#" in lab and lab in intents]
    assert len(seen_multi) == 12 and sum("#" in lab for lab in labels) == 15
    assert all(intents[y_test[i]] == labels[i] for i in seen_multi)


def test_atis_unseen_slot_tags_map_to_unk(atis: TaskSet) -> None:
    tags = atis.meta["slot_tags"]
    assert len(tags) == 121 and tags[-1] == UNK  # 120 training tags + UNK
    slots = atis["slots"]
    unk = len(tags) - 1
    y_train, y_val, y_test = (slots.arrays(s)[1] for s in ("train", "val", "test"))
    assert not np.any(y_train == unk)
    assert int(np.sum(y_val == unk)) == atis.meta["unseen_val_tags"] == 1
    assert int(np.sum(y_test == unk)) == atis.meta["unseen_test_tags"] == 6
    assert "B-compartment" in atis.meta["unseen_labels"]["test"]["slot_tags"]


def test_atis_unseen_gold_tags_keep_their_original_strings(atis: TaskSet) -> None:
    slots = atis["slots"]
    unk = unseen_class(slots.labels)
    assert unk == len(slots.labels) - 1
    for split, n_unseen in (("val", 1), ("test", 6)):
        gold = gold_tag_names(atis, 1, split)
        y = slots.arrays(split)[1]
        assert [len(g) for g in gold] == list((y != PAD_TAG).sum(1))
        at_unk = [g[i] for g, row in zip(gold, y, strict=True) for i in np.flatnonzero(row == unk)]
        assert len(at_unk) == n_unseen and UNK not in {t for g in gold for t in g}
        assert sorted(set(at_unk)) == atis.meta["unseen_labels"][split]["slot_tags"]
    # the recorded rows are exactly those with an unseen tag, and match the files
    rows = sorted(atis.meta["original_tags"])
    np.testing.assert_array_equal(rows, np.flatnonzero((slots.y == unk).any(1)))
    test_out = _bundled_lines("atis", "test", "seq.out")
    first = slots.test_idx[0]
    assert all(
        atis.meta["original_tags"][r] == tuple(test_out[r - first].split())
        for r in rows
        if r >= first
    )


def test_atis_token_alignment_matches_files(atis: TaskSet) -> None:
    intent, slots = atis
    vocab, tags = atis.meta["tokens"], atis.meta["slot_tags"]
    assert vocab[:2] == ["<pad>", "<unk>"]
    lengths = (intent.x != 0).sum(axis=1)
    np.testing.assert_array_equal(lengths, (slots.y != PAD_TAG).sum(axis=1))
    for row in (0, 1, 4477):
        words = _bundled_lines("atis", "train", "seq.in")[row].split()
        tag_names = _bundled_lines("atis", "train", "seq.out")[row].split()
        assert [vocab[i] for i in intent.x[row, : len(words)]] == words
        assert [tags[i] for i in slots.y[row, : len(words)]] == tag_names
        assert np.all(intent.x[row, len(words) :] == 0)
        assert np.all(slots.y[row, len(words) :] == PAD_TAG)
    test_words = [w for line in _bundled_lines("atis", "test", "seq.in") for w in line.split()]
    assert len(test_words) == int(lengths[intent.test_idx].sum())


def test_vocabulary_comes_from_training_only(atis: TaskSet) -> None:
    train_words = {w for line in _bundled_lines("atis", "train", "seq.in") for w in line.split()}
    vocab, tokens = atis.meta["vocab"], atis.meta["tokens"]
    assert set(vocab[2:]) == train_words
    assert tokens[: len(vocab)] == vocab
    x_test = atis["intent"].arrays("test")[0]
    oov = x_test >= len(vocab)
    assert int(np.sum(oov)) == atis.meta["oov_test_tokens"] == 71
    assert not np.any(x_test == 1)  # every test word keeps its spelling
    assert {tokens[i] for i in x_test[oov]}.isdisjoint(train_words)
    test_words = {w for line in _bundled_lines("atis", "test", "seq.in") for w in line.split()}
    assert set(tokens[len(vocab) :]) <= test_words | {
        w for line in _bundled_lines("atis", "dev", "seq.in") for w in line.split()
    }


def test_snips_facts(snips: TaskSet) -> None:
    assert snips.sizes()["slots"] == {"train": 13084, "val": 700, "test": 700}
    assert snips.meta["intents"][:-1] == [
        "AddToPlaylist",
        "BookRestaurant",
        "GetWeather",
        "PlayMusic",
        "RateBook",
        "SearchCreativeWork",
        "SearchScreeningEvent",
    ]
    assert len(snips.meta["slot_tags"]) == 73  # 72 training tags + UNK
    for key in ("unseen_val_intents", "unseen_test_intents", "unseen_val_tags", "unseen_test_tags"):
        assert snips.meta[key] == 0
    intent = snips["intent"]
    assert np.bincount(intent.y, minlength=8)[-1] == 0  # UNK never used


def test_max_len_truncates_and_n_train_subsamples() -> None:
    ts = load_slu("atis", max_len=10, n_train=200, seed=3)
    intent, slots = ts
    assert intent.x.shape == (200 + 500 + 893, 10) and slots.y.shape == intent.x.shape
    lines = ts.meta["source_lines"]["train"]
    assert len(lines) == 200 and np.all(np.diff(lines) > 0)
    train_in = _bundled_lines("atis", "train", "seq.in")
    kept = [train_in[i - 1] for i in lines]
    others = _bundled_lines("atis", "dev", "seq.in") + _bundled_lines("atis", "test", "seq.in")
    assert ts.meta["truncated"] == sum(len(u.split()) > 10 for u in kept + others)
    longest = max(range(200), key=lambda i: len(kept[i].split()))
    assert [ts.meta["tokens"][i] for i in intent.x[longest]] == kept[longest].split()[:10]
    again = load_slu("atis", max_len=10, n_train=200, seed=3)
    np.testing.assert_array_equal(again.meta["source_lines"]["train"], lines)
    np.testing.assert_array_equal(again["intent"].x, intent.x)
    other = load_slu("atis", max_len=10, n_train=200, seed=4)
    assert not np.array_equal(other.meta["source_lines"]["train"], lines)
    assert len(ts.meta["vocab"]) < 869  # a smaller training set, a smaller vocabulary


# -- user folders -------------------------------------------------------------------------
TINY = {
    "train": (["book a flight", "play some jazz", "book it"],
              ["O O B-thing", "O O B-genre", "O B-thing"], ["Book", "Play", "Book"]),
    "dev": (["play rock"], ["O B-genre"], ["Play#Book"]),
    "test": (["book a new song"], ["O O B-new I-new"], ["Rate"]),
}  # fmt: skip


def _write_folder(root: Path, spec: dict = TINY) -> Path:
    for split, (seq_in, seq_out, label) in spec.items():
        (root / split).mkdir(parents=True)
        for name, lines in (("seq.in", seq_in), ("seq.out", seq_out), ("label", label)):
            (root / split / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_user_folder_loads_with_unk_conventions(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "tiny")
    ts = load_slu_folder(folder)
    assert ts.name == "tiny" and ts.shared_inputs
    assert ts.meta["vocab"] == [
        "<pad>",
        "<unk>",
        "a",
        "book",
        "flight",
        "it",
        "jazz",
        "play",
        "some",
    ]
    assert ts.meta["intents"] == ["Book", "Play", UNK]
    assert ts.meta["slot_tags"] == ["B-genre", "B-thing", "O", UNK]
    intent, slots = ts
    np.testing.assert_array_equal(intent.y, [0, 1, 0, 2, 2])  # unseen "Play#Book" and "Rate"
    assert ts.meta["tokens"][9:] == ["new", "rock", "song"]  # dev/test only: OOV
    np.testing.assert_array_equal(intent.x[4], [3, 2, 9, 11])
    np.testing.assert_array_equal(slots.y[4], [2, 2, 3, 3])
    np.testing.assert_array_equal(slots.y[3], [2, 0, PAD_TAG, PAD_TAG])
    assert (ts.meta["unseen_val_intents"], ts.meta["unseen_test_intents"]) == (1, 1)
    assert ts.meta["unseen_test_tags"] == 2 and ts.meta["oov_test_tokens"] == 2
    via_registry = load(folder)
    np.testing.assert_array_equal(via_registry["slots"].y, slots.y)
    # span scoring sees the original tags of the unseen "new" span (row 4) ...
    assert ts.meta["original_tags"] == {4: ("O", "O", "B-new", "I-new")}
    assert gold_tag_names(ts, 1, "test") == [["O", "O", "B-new", "I-new"]]
    assert gold_tag_names(ts, 1, "val") == [["O", "B-genre"]]
    # ... and, without the record (meta lost), one-token spans of a type never predicted
    bare = ts.with_tasks(ts.tasks, meta={})
    assert gold_tag_names(bare, 1, "test") == [["O", "O", "B-UNK", "B-UNK"]]
    assert unseen_class(intent.labels) == 2 and unseen_class(("a", "b")) is None


def _misaligned(spec: dict) -> dict:
    spec = {k: tuple(list(v) for v in vals) for k, vals in spec.items()}
    spec["train"][1][2] = "O"  # line 3 of train/seq.out: 1 tag for 2 tokens
    return spec


def _empty_line(spec: dict) -> dict:
    spec = {k: tuple(list(v) for v in vals) for k, vals in spec.items()}
    spec["test"][0][0] = "  "
    return spec


def _short_label(spec: dict) -> dict:
    spec = {k: tuple(list(v) for v in vals) for k, vals in spec.items()}
    spec["train"][2].pop()
    return spec


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_misaligned, ["train/seq.out", "line 3", "1 tags", "2 tokens"]),
        (_empty_line, ["test/seq.in", "line 1 is empty"]),
        (_short_label, ["train", "same number of lines", "'label': 2"]),
    ],
)
def test_user_folder_rejects_malformed_files(tmp_path: Path, mutate, expected: list[str]) -> None:
    folder = _write_folder(tmp_path / "bad", mutate(TINY))
    with pytest.raises(DataError) as err:
        load_slu_folder(folder)
    for part in expected:
        assert part in str(err.value)


def test_user_folder_missing_parts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such SLU folder"):
        load_slu_folder(tmp_path / "nowhere")
    folder = _write_folder(tmp_path / "nodev")
    (folder / "dev" / "label").unlink()
    with pytest.raises(DataError, match="missing dev/label"):
        load_slu_folder(folder)
    with pytest.raises(DataError, match="unknown SLU"):
        load_slu("multiwoz")  # type: ignore[arg-type]
