"""The joint SLU model (BiLSTM intent + slots), its metrics and `taskrel predict`."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from taskrel.config import load_run_config
from taskrel.data import load
from taskrel.data.taskset import PAD_TAG, TaskSet
from taskrel.models import build_model
from taskrel.models.slu import (
    CharCNN,
    CharTable,
    JointSLU,
    encode_sentence,
    slu_metrics,
    slu_scores,
    tag_sentence,
)
from taskrel.training.metrics import evaluate
from taskrel.training.trainer import TrainConfig, train

TAGS = ("B-city", "I-city", "B-date", "O")


@pytest.fixture(scope="module")
def atis_small() -> TaskSet:
    """300 ATIS training utterances, no validation split, the first 300 test utterances."""
    ts = load("atis", n_train=300, seed=0)
    return ts.with_tasks(
        [
            replace(t, val_idx=np.zeros(0, dtype=np.int64), test_idx=t.test_idx[:300])
            for t in ts.tasks
        ]
    )


def test_span_f1_counts_partial_spans_as_wrong() -> None:
    gold = np.array([[0, 1, 3, PAD_TAG], [2, 3, 3, PAD_TAG]])
    # row 0: the city span loses its I- token (a different span: wrong); row 1 correct.
    pred = np.array([[0, 3, 3, 3], [2, 3, 3, 0]])
    scores = slu_metrics(np.array([1, 1]), np.array([1, 1]), gold, pred, TAGS)
    # gold spans {city(0:2), date(0:1)}, predicted {city(0:1), date(0:1)}: P = R = 1/2
    assert scores["slot_f1"] == pytest.approx(0.5)
    assert scores["overall_accuracy"] == pytest.approx(0.5)  # padding positions ignored


def test_span_f1_wrong_type_and_extra_span() -> None:
    gold = np.array([[0, 1, 3]])
    pred = np.array([[0, 1, 2]])  # right city span plus a spurious date span
    assert slu_metrics(np.array([0]), np.array([0]), gold, pred, TAGS)["slot_f1"] == (
        pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    )


def test_overall_accuracy_needs_intent_and_every_tag() -> None:
    gold_slots = np.array([[0, 1, PAD_TAG], [3, 3, PAD_TAG], [2, 3, 3]])
    pred_slots = np.array([[0, 1, 2], [3, 3, 3], [2, 3, 2]])  # row 2: last tag wrong
    scores = slu_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]), gold_slots, pred_slots, TAGS)
    assert scores["intent_accuracy"] == pytest.approx(2 / 3)
    assert scores["overall_accuracy"] == pytest.approx(1 / 3)  # only row 0 fully right


def test_a_span_with_an_unseen_tag_is_scored_with_its_original_tags() -> None:
    labels = ("B-city", "B-date", "O", "UNK")  # I-city never occurred in training
    gold, pred = np.array([[0, 3, 2]]), np.array([[0, 2, 2]])  # predicted: a shorter city
    original = [["B-city", "I-city", "O"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = slu_metrics(np.array([0]), np.array([0]), gold, pred, labels, original)
    assert scores["slot_f1"] == 0.0  # gold span city(0:2) != predicted city(0:1)
    assert scores["overall_accuracy"] == 0.0


TINY = {"embedding_dim": 8, "hidden": 8, "decoder_hidden": 8}


def _favour_unk(model: JointSLU, boost: float = 50.0) -> None:
    """Make ``UNK`` (the last class) the top raw score of every intent and tag, and the
    CRF's favourite start, transition target and end."""
    with torch.no_grad():
        model.intent_out.bias[-1] += boost
        model.slot_out.bias[-1] += boost
        if model.crf is not None:
            for scores in (model.crf.start, model.crf.transitions[:, -1], model.crf.end):
                scores[-1:] += boost


@pytest.mark.parametrize(("name", "crf"), [("slu", False), ("slu", True), ("feedback", True)])
def test_the_unseen_class_is_never_predicted(atis_small: TaskSet, name: str, crf: bool) -> None:
    torch.manual_seed(0)
    slu = {**TINY, "crf": crf}
    model = build_model(name, atis_small, slu if name == "slu" else {"slu": slu}).eval()
    body = model if isinstance(model, JointSLU) else model.body
    assert body.unseen == {
        0: atis_small["intent"].n_outputs - 1,
        1: atis_small["slots"].n_outputs - 1,
    }
    _favour_unk(body)
    intent, slots = atis_small
    x = torch.as_tensor(intent.x[intent.test_idx])
    unk_intent, unk_tag = intent.n_outputs - 1, slots.n_outputs - 1
    logits = model(x, 0)
    assert bool((logits.argmax(-1) == unk_intent).all())  # the raw scores prefer UNK ...
    torch.testing.assert_close(model.predict(x, 0), logits[:, :-1].argmax(-1))  # ... not used
    tags, real = model.predict(x, 1), x != 0
    assert not bool((tags[real] == unk_tag).any())
    if not crf:
        torch.testing.assert_close(tags[real], model(x, 1)[..., :-1].argmax(-1)[real])
    # gold unseen labels are therefore never counted correct
    y_intent, y_slots = intent.y[intent.test_idx], slots.y[slots.test_idx]
    assert (y_intent == unk_intent).sum() > 0 and (y_slots == unk_tag).sum() > 0
    scores = slu_scores(model, atis_small, "test")
    expected = float(np.mean(logits[:, :-1].argmax(-1).numpy() == y_intent))
    assert scores["intent_accuracy"] == pytest.approx(expected)


def test_evaluating_atis_test_gives_seqeval_real_spans(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = JointSLU.from_taskset(atis_small, TINY)
    full_test = load("atis", n_train=300, seed=0)  # all 893 test utterances, 88 unseen tags
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # seqeval's "UNK seems not to be NE tag" included
        metrics = evaluate(model, full_test, "test")
        scores = model.extra_metrics(full_test, "test")
    assert metrics["slots"]["slot_f1"] == pytest.approx(scores["slot_f1"])


def test_tagging_a_sentence_never_outputs_unk(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = JointSLU.from_taskset(atis_small, TINY).eval()
    _favour_unk(model)
    sentence = "show me flights from boston to denver"
    result = tag_sentence(model, atis_small, sentence)
    assert result.intent != "UNK" and "UNK" not in result.slots
    logits = model(encode_sentence(sentence, atis_small.meta["tokens"]), 0)[0, :-1].detach()
    assert result.intent == atis_small["intent"].labels[int(logits.argmax())]
    assert result.intent_probability == pytest.approx(float(torch.softmax(logits, 0).max()))


def test_outputs_do_not_depend_on_padding(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = JointSLU.from_taskset(
        atis_small, {"embedding_dim": 16, "hidden": 8, "decoder_hidden": 8}
    ).eval()
    x = torch.as_tensor(atis_small.tasks[0].x[:6])
    n = int((x[0] != 0).sum())
    for task in (0, 1):
        alone = model(x[:1, :n], task)
        batched = model(x, task)[:1]
        wide = model(torch.nn.functional.pad(x, (0, 7)), task)[:1]
        if task == 1:
            batched, wide = batched[:, :n], wide[:, :n]
            assert model(x, 1).shape == (6, x.shape[1], atis_small.tasks[1].n_outputs)
        torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone, wide, rtol=1e-5, atol=1e-6)


def test_parameter_partition(atis_small: TaskSet) -> None:
    model = build_model("slu", atis_small, {"embedding_dim": 8, "hidden": 4})
    assert set(model.shared_parameters()) == {
        n for n, _ in model.named_parameters() if n.startswith(("embedding.", "chars.", "lstm."))
    }
    assert all(n.startswith(("attention", "intent_")) for n in model.task_parameter_names(0))
    assert all(n.startswith(("slot_", "crf.")) for n in model.task_parameter_names(1))


def test_char_cnn_features_of_a_word_do_not_depend_on_its_batch() -> None:
    """A word's features are the max over its own characters' convolution outputs: the same
    whether its batch holds longer words or not (positions past its end would give the
    bias alone), and 0 for a token without characters; checked against a hand loop."""
    tokens = ["<pad>", "<unk>", "ab", "ba", "abcab", "zax"]
    table = CharTable.build(tokens, vocab_size=4, max_chars=5)
    torch.manual_seed(0)
    cnn = CharCNN(table, dim=3, filters=4)
    with torch.no_grad():
        cnn.conv.bias.fill_(5.0)  # a large bias: padded positions would win the max
        alone = cnn(torch.tensor([[2]]))[0, 0]
        batched = cnn(torch.tensor([[2, 4], [0, 1]]))
        torch.testing.assert_close(batched[0, 0], alone)
        torch.testing.assert_close(batched[1], torch.zeros(2, 4))  # <pad>, <unk>: no chars
        chars = torch.as_tensor(table.ids[4][:5])  # "abcab": 2 3 1 2 3
        emb = cnn.embedding(chars).T.unsqueeze(0)  # (1, dim, 5)
        want = cnn.conv(emb)[0].amax(dim=1)
        torch.testing.assert_close(batched[0, 1], want)


def test_char_table_spells_tokens_with_the_training_alphabet() -> None:
    tokens = ["<pad>", "<unk>", "ab", "ba", "abcab", "zax"]  # vocabulary: ids < 4
    table = CharTable.build(tokens, vocab_size=4, max_chars=4)
    assert table.alphabet == ("a", "b")
    np.testing.assert_array_equal(
        table.ids,
        [[0, 0, 0, 0], [0, 0, 0, 0], [2, 3, 0, 0], [3, 2, 0, 0], [2, 3, 1, 2], [1, 2, 1, 0]],
    )


@pytest.mark.parametrize("char_filters", [0, 6])
def test_out_of_vocabulary_words_are_unk_words_with_their_own_spelling(
    atis_small: TaskSet, char_filters: int
) -> None:
    torch.manual_seed(0)
    model = build_model(
        "slu", atis_small, {"embedding_dim": 8, "hidden": 4, "char_filters": char_filters}
    )
    model.eval()
    vocab_size = len(atis_small.meta["vocab"])
    oov = np.unique(atis_small["intent"].x[atis_small["intent"].test_idx])
    oov = oov[oov >= vocab_size]
    assert len(oov) >= 2  # the 300-utterance vocabulary misses many test words
    row = [5, 1, int(oov[0]), int(oov[1])]
    emb = model.encode(torch.tensor([row])).emb[0]  # (4, E): eval mode, no dropout
    word = model.config.embedding_dim
    for i in (2, 3):  # the word part is <unk>'s embedding
        torch.testing.assert_close(emb[i, :word], emb[1, :word])
    if char_filters:  # ... the spelling part is not
        assert not torch.allclose(emb[2, word:], emb[1, word:])
        assert not torch.allclose(emb[2, word:], emb[3, word:])
    else:
        assert emb.shape[1] == word
        torch.testing.assert_close(emb[2], emb[3])


def test_training_learns_intents_and_slots(atis_small: TaskSet) -> None:
    torch.manual_seed(0)
    model = JointSLU.from_taskset(
        atis_small, {"embedding_dim": 64, "hidden": 64, "decoder_hidden": 64, "dropout": 0.1}
    )
    before = slu_scores(model, atis_small, "test")
    train(model, atis_small, TrainConfig(epochs=12, lr=3e-3, batch_size=16, seed=0), progress=False)
    after = slu_scores(model, atis_small, "test")
    assert before["intent_accuracy"] < 0.3 and before["slot_f1"] < 0.1
    assert after["intent_accuracy"] > 0.8 and after["slot_f1"] > 0.6
    assert after["overall_accuracy"] > before["overall_accuracy"] + 0.2


def test_encode_sentence_maps_unknown_words() -> None:
    vocab = ["<pad>", "<unk>", "boston", "flights"]
    assert encode_sentence("Flights to boston", vocab).tolist() == [[3, 1, 2]]


def test_predict_command_tags_a_sentence(atis_small: TaskSet, tmp_path, capsys) -> None:
    from taskrel.cli import main
    from taskrel.config import RunConfig
    from taskrel.pipelines.experiment import run_training

    cfg = RunConfig.model_validate(
        {
            "data": {"name": "atis", "options": {"n_train": 100}},
            "model": {"name": "slu", "embedding_dim": 8, "hidden": 8, "decoder_hidden": 8},
            "train": {"epochs": 1, "batch_size": 50},
        }
    )
    (tmp_path / "run").mkdir()
    run_training(cfg, tmp_path / "run", progress=False)
    status = main(["predict", str(tmp_path / "run"), "show me flights from boston to denver"])
    out = capsys.readouterr().out
    assert status == 0
    assert "intent" in out and "atis_" in out and "denver" in out
    assert main(["predict", str(tmp_path / "nothing"), "hi"]) == 2


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[1] / "examples").glob("atis-*.toml")),
    ids=lambda p: p.name,
)
def test_example_configs_are_valid_runs(path: Path, atis_small: TaskSet) -> None:
    config = load_run_config(path)
    assert config.data.name == "atis" and config.train.selection_metric == "overall_accuracy"
    model = build_model(config.model_name, atis_small, config.model_options)
    assert "overall_accuracy" in model.extra_metrics(atis_small, "test")
