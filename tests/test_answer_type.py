"""The answer-type classifier: its file, its decisions, what it encodes, and `rag-train answer-type` on tiny data."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import rag.answer_type
from rag.answer_type import AnswerTypeClassifier, load_answer_types, question_heads, states_number
from trainer.cli import main_train

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingEncoder:
    """A fixed 2-d vector per text, counting the texts it was asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[1.0, 0.0] if t.lower().startswith("where") else [0.0, 1.0] for t in texts], dtype=np.float32)


def classifier(threshold: float = 0.9) -> AnswerTypeClassifier:
    # Features: the whole question's 2-d vector, then its first word's, then its first two words'.
    weights = np.zeros((6, 2), dtype=np.float32)
    weights[2, 0], weights[3, 1] = 10.0, 10.0  # the first word decides: "where" -> LOC, anything else -> NUM
    return AnswerTypeClassifier(["LOC", "NUM"], weights, np.zeros(2), threshold, "enc", {"note": "test"})


def test_file_round_trips_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    classifier().save(tmp_path / "a.json")
    loaded = AnswerTypeClassifier.load(tmp_path / "a.json")
    assert (loaded.labels, loaded.threshold, loaded.encoder, loaded.training) == (["LOC", "NUM"], 0.9, "enc", {"note": "test"})
    np.testing.assert_allclose(loaded.weights, classifier().weights)
    (tmp_path / "other.json").write_text(json.dumps({"kind": "two-hop-detector"}))
    (tmp_path / "partial.json").write_text(json.dumps({"kind": "answer-type-classifier", "labels": ["LOC"]}))
    for bad in (tmp_path / "other.json", tmp_path / "missing.json", tmp_path / "partial.json"):
        with pytest.raises(ValueError, match="answer-type classifier"):
            AnswerTypeClassifier.load(bad)
    with pytest.raises(ValueError, match="do not fit 3 labels"):
        AnswerTypeClassifier(["A", "B", "C"], np.zeros((6, 2)), np.zeros(2), 0.5, "enc")
    assert load_answer_types("enc", tmp_path / "a.json") is not None
    assert load_answer_types("enc", tmp_path / "a.json", dim=2) is not None
    with pytest.raises(ValueError, match="has 6 weights a label for enc's 9 features"):
        load_answer_types("enc", tmp_path / "a.json", dim=3)
    assert load_answer_types("another-encoder", tmp_path / "a.json") is None  # reads another encoder's vectors
    assert load_answer_types("enc", tmp_path / "missing.json") is None


def test_kinds_are_confident_or_none_and_texts_are_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert question_heads(["How tall is it?", "Why"], 2) == ["How tall", "Why"]
    encode = CountingEncoder()
    found = classifier().kinds(["Where is it?", "How tall is it?"], encode)
    assert found == ["LOC", "NUM"]
    assert sorted(encode.seen) == sorted(["Where is it?", "How tall is it?", "Where", "How", "Where is", "How tall"])
    encode.seen.clear()
    given = np.array([[0.5, 0.5]], dtype=np.float32)  # the router's own vector of the question: only its heads are encoded
    assert classifier().kinds(["When was it?"], encode, vectors=given) == ["NUM"] and encode.seen == ["When", "When was"]
    cached = classifier()
    cached.kinds(["Where is it?"], encode)
    encode.seen.clear()
    assert cached.kinds(["Where is it?", "Where is it?"], encode) == ["LOC", "LOC"] and encode.seen == []
    assert classifier(threshold=1.0).kinds(["Where is it?"], encode) == [None]  # not confident enough: no kind
    encode.seen.clear()  # a wh-word naming a unit of time asks for a date, sure or not: it is not even encoded
    assert classifier(threshold=1.0).kinds(["In what year was it built?", "On which dates is it open?", "What century?",
                                            "In what city is it?"], encode) == ["NUM", "NUM", "NUM", None]
    assert encode.seen == ["In what city is it?", "In", "In what"]
    compounds = ["Which yearbook is it in?", "What day-care is it?", "Which Day-Lewis film?", "What day school is it?",
                 "What date palm grows there?", "What daytime show is it?"]
    assert classifier(threshold=1.0).kinds(compounds, encode) == [None] * len(compounds)
    monkeypatch.setattr(rag.answer_type, "MAX_KNOWN", 3)  # a full cache starts afresh without losing this call's kinds
    cached.kinds(["Where is a?", "When is b?"], encode)
    assert cached.kinds(["Where is a?", "When is c?", "When is d?"], encode) == ["LOC", "NUM", "NUM"]
    with pytest.raises(ValueError, match="reads 6 features"):
        classifier().probabilities(np.zeros((1, 4), dtype=np.float32))


def write_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_rag_train_answer_type_on_tiny_data(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    kinds = {"LOC": "Where is place{}?", "NUM": "How many things are in box{}?", "HUM": "Who founded company{}?"}
    trec = write_gz(tmp_path / "trec-train.jsonl.gz", [{"question": q.format(i), "label": label} for label, q in kinds.items() for i in range(20)])
    counterfact = write_gz(tmp_path / "counterfact-train.jsonl.gz", [
        {"case_id": i, "prompt": f"Item{i} is located in", "target_new": "Rome", "subject": f"Item{i}", "ground_truth": "Paris",
         "rephrase_prompt": f"Item{i} can be found in", "locality_prompt": "Other is in", "locality_ground_truth": "Oslo"} for i in range(6)])
    zsre = write_gz(tmp_path / "zsre-tiny.jsonl.gz", [
        {"subject": f"Thing{i}", "src": f"Where is Thing{i}?" if i % 2 else f"Who made Thing{i}?", "rephrase": f"Where can Thing{i} be found?",
         "alt": "Rome", "answers": ["Paris"], "loc": "nq question: who is it", "loc_ans": "x"} for i in range(12)])
    out = tmp_path / "answer-type.json"
    argv = ["answer-type", "--out", str(out), "--trec", str(trec), "--counterfact", str(counterfact), "--counterfact-cases", "20",
            "--zsre", str(zsre), "--encoder", tiny_encoder_path, "--threads", "1", "--steps", "20"]
    assert main_train(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    loaded = AnswerTypeClassifier.load(out)
    assert loaded.labels == ["HUM", "LOC", "NUM"] and loaded.encoder == tiny_encoder_path and summary["threshold"] == loaded.threshold
    assert loaded.training["data"]["held_out"] == 6 and 0.0 <= loaded.training["trec_held_out_accuracy"] <= 1.0
    assert loaded.training["data"]["threshold_pairs"]["pairs"] > 6  # counterfact's and the training fold's paraphrases
    assert loaded.training["data"]["threshold_pairs"]["counterfact_cases"] == 6  # all of them, though 20 were asked for
    # Evaluation-only data, or zsre-1k whole, is refused before anything is written.
    (tmp_path / "counterfact-test.jsonl.gz").write_bytes(counterfact.read_bytes())
    for bad, message in ((["--counterfact", str(tmp_path / "counterfact-test.jsonl.gz")], "evaluation-only"),
                         (["--zsre-fold", "0/1"], "train on one fold"), (["--max-paraphrase-conflicts", "1.5"], "is a share")):
        assert main_train([*argv[:2], str(tmp_path / "bad.json"), *argv[3:], *bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
    # A TREC file of another shape is named by file and line, not a KeyError's traceback.
    (tmp_path / "qa.jsonl").write_text('{"question": "Who?", "answers": ["x"]}\n')
    (tmp_path / "notjson.jsonl").write_text("{\n")
    write_gz(tmp_path / "one-label.jsonl.gz", [{"question": "Who?", "label": "HUM"}])
    for bad, message in ((["--trec", str(tmp_path / "qa.jsonl")], "qa.jsonl:1: not a TREC record: it needs \"question\" and \"label\""),
                         (["--trec", str(tmp_path / "notjson.jsonl")], "notjson.jsonl:1: not JSON"),
                         (["--trec", str(tmp_path / "one-label.jsonl.gz")], "at least two labels"),
                         (["--weight-decay", "-1"], "--weight-decay must be 0 or more")):
        assert main_train([*argv[:2], str(tmp_path / "bad.json"), *argv[3:], *bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
    # An --out that cannot be written is found before the training, not after it; a refused run makes no folder.
    assert main_train([*argv[:2], str(tmp_path), *argv[3:]]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    assert main_train([*argv[:2], str(tmp_path / "new" / "a.json"), *argv[3:], "--max-paraphrase-conflicts", "2"]) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("answer", ["1972", "March", "fifteen", "sixty", "the 19th century", "twentieth century", "several weeks",
                                    "a fortnight", "Ming dynasty", "World War II", "the Middle Ages", "Monday", "noon", "twice",
                                    "half", "thousands", "三百"])
def test_answers_that_can_answer_when_or_how_many(answer: str) -> None:
    """A question asking for a number or a date stays in the scope of an edit whose answer is one of these."""
    assert states_number(answer)


@pytest.mark.parametrize("answer", ["European Space Agency", "Croatia", "Ada Brightwater", "uniform", "Smith", "Elizabeth",
                                    "North", "endangered"])
def test_answers_that_cannot(answer: str) -> None:
    assert not states_number(answer)
