"""The two-hop question detector: its file, its decisions, and the questions it is trained on."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import TextEncoder
from indexer.names import unnamed_subject
from rag.editing import names_subject
from rag.two_hop import SHIPPED, TwoHopDetector, load_two_hop, resolve_first_hop, split_first_hop
from trainer.edit_cases import EditCase, Probe
from trainer.two_hop_training import fit, questions_of, relation_pairs

DIED = EditCase("1", "Ada Lovelace died in", "Paris", subject="Ada Lovelace", target_old="London",
                paraphrases=["Ada Lovelace passed away in"], neighbors=[Probe("Charles Babbage died in", "London")])
SPEAKS = EditCase("2", "The mother tongue of Ada Lovelace is", "French", subject="Ada Lovelace")


def test_detector_file_round_trips_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    detector = TwoHopDetector(np.array([1.0, -1.0, 0.5]), 0.25, 0.6, 0.3, "enc", {"note": "test"})
    detector.save(tmp_path / "d.json")
    loaded = TwoHopDetector.load(tmp_path / "d.json")
    vectors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(loaded.scores(vectors), 1 / (1 + np.exp(-np.array([1.25, -0.75]))), rtol=1e-6)
    assert loaded.is_two_hop(vectors).tolist() == [True, False]
    assert (loaded.threshold, loaded.relation_threshold, loaded.encoder, loaded.training) == (0.6, 0.3, "enc", {"note": "test"})
    with pytest.raises(ValueError, match="reads 3-d vectors of enc"):
        loaded.scores(np.zeros((1, 4)))
    (tmp_path / "other.json").write_text(json.dumps({"kind": "scope-classifier"}))
    (tmp_path / "partial.json").write_text(json.dumps({"kind": "two-hop-detector", "weights": [1.0]}))
    for bad in (tmp_path / "other.json", tmp_path / "missing.json", tmp_path / "partial.json"):
        with pytest.raises(ValueError, match="two-hop detector"):
            TwoHopDetector.load(bad)
    with pytest.raises(ValueError, match="threshold is a probability"):
        TwoHopDetector(np.zeros(3), 0.0, 1.5, 0.0, "enc")
    assert load_two_hop("enc", tmp_path / "d.json") is not None
    assert load_two_hop("enc", tmp_path / "d.json", dim=3) is not None
    with pytest.raises(ValueError, match="has 3 weights for enc's 4-d vectors: a damaged file"):
        load_two_hop("enc", tmp_path / "d.json", dim=4)
    assert load_two_hop("another-encoder", tmp_path / "d.json") is None  # reads another encoder's vectors
    assert load_two_hop("enc", tmp_path / "missing.json") is None


def test_shipped_detector_tells_two_hop_questions_from_one_hop_ones() -> None:
    """The shipped detector over the default encoder, on a few hand-written questions."""
    detector = TwoHopDetector.load(SHIPPED)
    assert detector.encoder == "all-MiniLM-L6-v2" and detector.dim == 384
    two_hop = ["What is the capital of the country Danielle Darrieux is a citizen of?",
               "Which language is spoken in the city where Ada Lovelace died?",
               "What is the official language of the country where the Eiffel Tower is located?"]
    one_hop = ["What is the capital of France?", "Where did Ada Lovelace die?", "Who wrote Hamlet?",
               "What is the mother tongue of Danielle Darrieux?"]
    found = detector.is_two_hop(TextEncoder(detector.encoder, device="cpu")(two_hop + one_hop))
    assert found.tolist() == [True] * 3 + [False] * 4


def test_training_questions_compose_a_second_hop_over_place_relations_only() -> None:
    questions = questions_of([DIED, SPEAKS], ["who wrote hamlet?"], random.Random(0))
    two_hop = [q.text for q in questions if q.label == 1]
    assert len(two_hop) == 1 and "where Ada Lovelace died" in two_hop[0]  # not for the mother tongue
    kinds = {q.kind: q.text for q in questions if q.label == 0}
    assert kinds["first-hop"].startswith("What is the ") and kinds["first-hop"].endswith(" where Ada Lovelace died?")
    # The same second hop, asked of the new target itself.
    assert kinds["second-hop"] == re.sub(r"the (place|country|city|region) where Ada Lovelace died", "Paris", two_hop[0])
    assert kinds["nq"] == "who wrote hamlet?" and kinds["neighbor"] == "Charles Babbage died in"
    assert not {"held-out-two-hop", "held-out-second-hop"} & {q.kind for q in questions}
    held = {q.kind: q.label for q in questions_of([DIED], [], random.Random(0), held_out=True)}
    assert held["held-out-two-hop"] == 1 and held["held-out-second-hop"] == 0
    facts, probes, same = relation_pairs([DIED, SPEAKS], random.Random(0))
    assert facts == [DIED.fact, DIED.fact] and same.tolist() == [1, 0]
    assert "Ada Lovelace died" in probes[0] and "Ada Lovelace died" not in probes[1]


def test_fit_separates_separable_questions() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    labels = (vectors[:, 0] > 0.5).astype(int)
    weights, bias = fit(vectors, labels, steps=300, lr=0.1, weight_decay=0.0, seed=0)
    decided = (vectors @ weights + bias) >= 0
    assert (decided == labels.astype(bool)).mean() > 0.97


@pytest.mark.parametrize("question, subject, answer, expected", [
    ("What is the capital of the country Kim Myhr is a citizen of?", "Kim Myhr", "Iraq", "What is the capital of Iraq?"),
    ("what language is spoken in the city where the Eiffel Tower is?", "eiffel tower", "Rome", "what language is spoken in Rome?"),
    ("Which currency is used in the country where Kim Myhr lives, and since when?", "Kim Myhr", "Iraq",
     "Which currency is used in Iraq, and since when?"),
    ("The country Kim Myhr is a citizen of has what capital?", "Kim Myhr", "Iraq", None),  # nothing left around it
    ("He studied at the Sorbonne. The country Kim Myhr is a citizen of has what capital?", "Kim Myhr", "Iraq", None),
    ("It lies on the coast. What is the capital of the country Kim Myhr is a citizen of?", "Kim Myhr", "Iraq",
     "It lies on the coast. What is the capital of Iraq?"),
    ("Where does Kim Myhr live?", "Kim Myhr", "Iraq", None),  # no phrase opens before the subject
    ("What is the capital of the country Kim Myhr is a citizen of?", "Ada Lovelace", "Iraq", None),
    ("What is the capital of the country Kim Myhr is a citizen of?", None, "Iraq", None),  # an edit that states no subject
    ("What is the capital of the country Al is a citizen of?", "Al", "Iraq", "What is the capital of Iraq?"),  # not in "capital"
    ("Where is Kim Myhr from? What is the capital of the country Kim Myhr is a citizen of?", "Kim Myhr", "Iraq",
     "Where is Kim Myhr from? What is the capital of Iraq?"),  # the occurrence that has a first hop
    ("On which continent is the place where Savdhaan India @ 11 comes from?", "Savdhaan India @ 11", "Poland",
     "On which continent is Poland?"),
    ("What language is spoken in the city where LÉON DIERX died?", "Léon Dierx", "Paris", "What language is spoken in Paris?"),
    ("What language is spoken in the country Frederic Chopin's father was born in?", "Frédéric Chopin", "Poland",
     "What language is spoken in Poland?"),
    ("What is the name of the state in which Terricciola is situated?", "Terricciola", "Bergamo", None),  # asks the first hop
    # The subject with the kind of place it is: the edit's own question in other words, not a hop through it ...
    ("Which country is the town of Gospić in?", "Gospić", "Croatia", None),
    # ... and where a first hop opens before it, that is the one.
    ("What is the capital of the country the town of Gospić is in?", "Gospić", "Croatia", "What is the capital of Croatia?"),
    ("What city is the capital of the nation of Poland?", "Poland", "Kraków", "What city is Kraków?"),
    ("What is the capital of the twin city of Ostrava?", "Ostrava", "Katowice", "What is the capital of Katowice?"),
])
def test_resolve_first_hop(question: str, subject: str | None, answer: str, expected: str | None) -> None:
    assert resolve_first_hop(question, subject, answer) == expected


def test_a_first_hop_is_found_in_the_wording_whatever_the_edit_states() -> None:
    """What surrounds the first hop, which an edit that states only a fact has no answer to fill."""
    assert split_first_hop("What is the capital of the country Kim Myhr is a citizen of, then?", "Kim Myhr") == (
        "What is the capital of ", ", then?")
    assert split_first_hop("What is the name of the state in which Terricciola is situated?", "Terricciola") is None


@pytest.mark.parametrize("argv, message", [
    (["--relation-recall", "0"], "--relation-recall is a share"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--val", "counterfact-test.jsonl.gz"], "evaluation-only"),
    (["--train", "no-such-file.jsonl.gz"], "no-such-file"),
])
def test_training_command_refuses_bad_input(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from trainer.cli import main_train

    assert main_train(["two-hop", "--out", str(tmp_path / "d.json"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("question, subject, named", [
    ("Frédéric Chopin was employed in", "Nicolas Chopin", False),
    ("Derby High School can be found in", "Derby School", False),
    ("iPhone 8, developed by", "iOS 8", False),
    ("Was Chopinesque music popular?", "Chopin", False),
    ("Where did John Williams study?", "John William", False),  # a name's plural is another name
    ("소유 는?", "서울", False),  # Hangul syllables are letters, not letters plus accents
    ("Where did frederic chopin work?", "Frédéric Chopin", True),
    ("Where did Fre\u0301de\u0301ric Chopin work?", "Frédéric Chopin", True),  # typed decomposed
    ("Where was O\u2019Brien born?", "O'Brien", True),
    ("What was Robert Edward Chambliss\u2019s crime?", "Robert Edward Chambliss", True),
    ("What's the team of Fredrik Semb Berge's brother?", "Fredrik Semb Berge", True),
    ("What's the threatened status of Houston toads?", "Houston toad", True),
    ("Which birds nest in marshes?", "marsh", True),
    ("Where is Yahoo!'s head office?", "Yahoo!", True),
    ("Anything at all", None, False),
])
def test_names_subject_ignores_case_accents_and_plural_or_possessive_endings(question: str, subject: str | None, named: bool) -> None:
    assert names_subject(question, subject) is named


@pytest.mark.parametrize("fact,question,subject,warned", [
    ("The Eiffel Tower is in Rome.", None, "eiffel tower", False),
    ("It is in Rome.", "Where is the Eiffel Tower?", "Eiffel Tower", False),  # the question names it
    ("The Eiffel Tower is in Rome.", "Where is it?", "Eifel Tower", True),  # a typo
    ("The Eiffel Tower is in Rome.", None, None, False),
])
def test_an_edit_subject_that_neither_fact_nor_question_names_is_flagged(fact: str, question: str | None, subject: str | None,
                                                                        warned: bool) -> None:
    assert (unnamed_subject(fact, question, subject) is not None) is warned


def test_training_needs_an_out_file_so_the_shipped_detector_is_never_overwritten_by_default(capsys: pytest.CaptureFixture) -> None:
    from trainer.two_hop_training import build_parser

    # Parsing only (`rag-train two-hop` takes this parser): were --out optional again, running the command here would
    # train and overwrite the shipped file.
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["--steps", "1"])
    assert refused.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err
