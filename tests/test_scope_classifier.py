"""The edit scope classifier on a tiny random BERT: probabilities, saving, learning, the pairs it trains on,
the threshold choice, refusing evaluation-only data; and the shipped classifier, where it is present."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.edit_memory import Edit
from indexer.encoder import TextEncoder
from rag.answer_type import AnswerTypeClassifier
from rag.editing import ClassifierScope
from rag.scope_classifier import CONFIG_FILE, SHIPPED, ScopeClassifier, is_scope_classifier
from trainer.edit_cases import EditCase, Probe, in_fold, read_cases
from trainer.scope_data import CachedEncoder, ScopeDataConfig, ScopePair, build_pairs, check_not_evaluation_only, relations
from trainer.classifier_metrics import auc, best_threshold
from trainer import scope_training
from trainer.scope_training import ScopeTrainingConfig, main, scope_loss, train_scope_classifier

EDITS = ["The mother tongue of Danielle Darrieux is English.", "The twin city of Wellington is Sheffield.", "Toko Yasuda plays the piano."]
QUESTIONS = ["What is the mother tongue of Danielle Darrieux?", "who won the world cup in 2010", "Toko Yasuda, the"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def classifier(tiny_encoder_path: str) -> ScopeClassifier:
    return ScopeClassifier.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=32)


def test_scores_are_probabilities_in_input_order(classifier: ScopeClassifier) -> None:
    scores = classifier.scores(EDITS, QUESTIONS)
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    # Batching (and the length sort inside) changes nothing; one pair alone scores the same.
    assert np.allclose(classifier.scores(EDITS, QUESTIONS, batch_size=1), scores, atol=1e-5)
    assert np.allclose(classifier.scores(EDITS[1:2], QUESTIONS[1:2]), scores[1:2], atol=1e-5)
    assert classifier.scores([], []).shape == (0,)
    assert classifier.in_scope(EDITS, QUESTIONS).tolist() == (scores >= classifier.threshold).tolist()
    # forward gives one logit per pair.
    assert classifier(**classifier.encode(EDITS, QUESTIONS)).shape == (3,)


def test_bad_input_is_refused(classifier: ScopeClassifier) -> None:
    with pytest.raises(ValueError, match="2 edit texts but 3 questions"):
        classifier.scores(EDITS[:2], QUESTIONS)
    with pytest.raises(TypeError, match="not one string"):
        classifier.scores(EDITS[0], QUESTIONS[0])
    with pytest.raises(ValueError, match="batch_size"):
        classifier.scores(EDITS, QUESTIONS, batch_size=0)
    with pytest.raises(ValueError, match="probability"):
        classifier.threshold = 1.5


def test_save_and_load_round_trip(classifier: ScopeClassifier, tmp_path: Path) -> None:
    classifier.threshold = 0.37
    classifier.config.similarity_threshold = 0.81
    classifier.config.subject_threshold = 0.2
    expected = classifier.scores(EDITS, QUESTIONS)
    classifier.save_pretrained(tmp_path / "exact", encoder_dtype=torch.float32)
    classifier.save_pretrained(tmp_path / "half")
    assert is_scope_classifier(tmp_path / "half") and not is_scope_classifier(tmp_path)
    # The router (rag/editing.py) reads both thresholds from this file.
    saved = json.loads((tmp_path / "half" / CONFIG_FILE).read_text())
    assert saved["threshold"] == 0.37 and saved["similarity_threshold"] == 0.81
    exact = ScopeClassifier.from_pretrained(tmp_path / "exact", device="cpu")
    assert np.allclose(exact.scores(EDITS, QUESTIONS), expected, atol=1e-6)
    half = ScopeClassifier.from_pretrained(tmp_path / "half", device="cpu")
    assert next(half.encoder.parameters()).dtype == torch.float32
    assert np.allclose(half.scores(EDITS, QUESTIONS), expected, atol=2e-3)
    assert half.threshold == 0.37 and half.similarity_threshold == 0.81
    # Edits that state their subject get the subject threshold; the others the threshold.
    scope = ClassifierScope(half)
    assert scope.limit(Edit("e1", "f", None, None, "Ada", "t")) == 0.2 and scope.limit(Edit("e2", "f", None, None, None, "t")) == 0.37
    # ... and those asked as a question the question threshold, once there is one.
    asked = Edit("e3", "Where was Ada born? Paris.", "Where was Ada born? ", "Paris", "Ada", "t")
    assert scope.limit(asked) == 0.2
    half.config.question_subject_threshold = 0.05
    scope = ClassifierScope(half)
    assert scope.limit(asked) == 0.05 and scope.limit(Edit("e1", "f", "Ada was born in", None, "Ada", "t")) == 0.2
    assert scope.limit(Edit("e4", "f", "Where was it born?", None, None, "t")) == 0.37
    for name in ("subject_threshold", "question_subject_threshold"):
        setattr(half.config, name, 1.5)
        with pytest.raises(ValueError, match=f"{name} is a probability"):
            half.config.check()
        setattr(half.config, name, 0.2)
    # Saving does not change the model being trained.
    assert next(classifier.encoder.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="not a scope classifier folder"):
        ScopeClassifier.from_pretrained(tmp_path)


def test_training_steps_drive_the_loss_down(classifier: ScopeClassifier) -> None:
    # Separable (by a word of the question: a random tiny model could not learn to match the two texts in a few steps).
    words = ["alpha", "bravo", "charlie", "delta"]
    batch = [ScopePair(f"The {w} fact.", f"{w}?", f"what about {w} {q}", int(q == "yes"), "question" if q == "yes" else "near-edit", w)
             for w in words for q in ("yes", "no", "never", "nothing")]
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    classifier.train()
    losses = []
    for _ in range(25):
        loss = scope_loss(classifier, batch, pos_weight=3.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    scores = classifier.scores([p.edit_text for p in batch], [p.question for p in batch])
    assert auc(scores, np.array([p.label for p in batch])) > 0.9


def test_threshold_and_auc() -> None:
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8, 0.9]), np.array([0, 0, 1, 1, 1])
    assert auc(scores, labels) == pytest.approx(5 / 6)
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    threshold, balanced = best_threshold(scores, labels)
    assert threshold == pytest.approx(0.6) and balanced == pytest.approx(5 / 6)
    threshold, balanced = best_threshold(np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1]))
    assert threshold == pytest.approx(0.45) and balanced == 1.0
    with pytest.raises(ValueError, match="both"):
        best_threshold(scores, np.ones(5))


def _case(n: int, subject: str, template: str, old: str, new: str, neighbor: str) -> EditCase:
    question = template.format(subject)
    return EditCase(str(n), question, new, target_old=old, subject=subject, paraphrases=[f"Everyone knows {question}"],
                    neighbors=[Probe(neighbor, old)])


LANG = ["English", "French", "German", "Dutch", "Italian", "Spanish"]
CITY = ["London", "Paris", "Berlin", "Rome", "Madrid", "Vienna"]
LANG_TEMPLATES = ("The mother tongue of {} is", "{} is a native speaker of")
CITY_TEMPLATES = ("{} is located in", "Where is {}? It is located in")


def toy_cases() -> list[EditCase]:
    """Two relations of two templates each, 24 cases each; a neighbour prompt uses the relation's other template."""
    cases = []
    for i in range(24):
        lang, other_lang = LANG_TEMPLATES[i % 2], LANG_TEMPLATES[1 - i % 2]
        cases.append(_case(i, f"Person{i} Lang", lang, LANG[i % 6], LANG[(i + 1) % 6], other_lang.format(f"Other{i}")))
        city, other_city = CITY_TEMPLATES[i % 2], CITY_TEMPLATES[1 - i % 2]
        cases.append(_case(100 + i, f"Town{i} Place", city, CITY[i % 6], CITY[(i + 2) % 6], other_city.format(f"Village{i}")))
    return cases


def test_relations_group_templates_by_neighbour_prompts() -> None:
    groups = relations(toy_cases())
    assert set(groups) == {*LANG_TEMPLATES, *CITY_TEMPLATES}
    assert groups[LANG_TEMPLATES[0]] == groups[LANG_TEMPLATES[1]] != groups[CITY_TEMPLATES[0]] == groups[CITY_TEMPLATES[1]]


def test_build_pairs(tiny_encoder: TextEncoder) -> None:
    cases = toy_cases()
    nq = ["who wrote hamlet", "when did the war end", "how tall is everest", "what is the capital of peru"]
    encode = CachedEncoder(tiny_encoder, progress=False)
    config = ScopeDataConfig(near_depth=4, near_per_question=1, relation_paraphrase=1, other_relation=2, nq_per_case=0.1, seed=3)
    pairs = build_pairs(cases, nq, encode, config, progress=False)
    by_kind: dict[str, list[ScopePair]] = {}
    for p in pairs:
        by_kind.setdefault(p.kind, []).append(p)
    counts = {k: len(v) for k, v in by_kind.items()}
    # Each relation has one other template; round(0.1 * 48) = 5 NQ questions asked, 4 exist.
    assert counts == {"question": 48, "paraphrase": 48, "neighbor": 48, "near-edit": 3 * 48, "relation-paraphrase": 48,
                      "other-relation": 96, "nq": 4}
    assert {p.label for k in ("question", "paraphrase", "relation-paraphrase") for p in by_kind[k]} == {1}
    assert {p.label for k in ("neighbor", "near-edit", "other-relation", "nq") for p in by_kind[k]} == {0}
    facts = {c.fact: c for c in cases}
    for p in by_kind["near-edit"]:
        # Never the case's own edit, and never an edit whose subject the question names.
        assert facts[p.edit_text].subject.casefold() not in p.question.casefold()
    for kind, same in (("relation-paraphrase", True), ("other-relation", False)):
        for p in by_kind[kind]:
            # The edit's subject, in a template of the same relation (not its own) or of the other relation.
            case = facts[p.edit_text]
            assert case.subject in p.question and p.question != case.question
            assert (("located" in p.question or "Where is" in p.question) == ("located" in case.question)) == same
    assert pairs == build_pairs(cases, nq, encode, config, progress=False)  # seeded
    # Similarity is the cosine of question and edit key: 1 for an edit's own question.
    own = by_kind["question"][:3]
    assert np.allclose(encode.similarity(own), 1.0, atol=1e-5)


ZSRE_LIKE = (("What was {}'s occupation?", "What was {}'s career?"), ("In what city did {} die?", "Where did {} die?"),
             ("Which team does {} play for?", "What team is {} associated with?"), ("What is {} named after?", "Who is {} named for?"))


def test_cases_without_relation_groups_get_other_wordings_as_negatives() -> None:
    """zsRE-like cases (every wording too rare to group) get another case's question put to their subject as an
    other-relation negative, but not a wording that reads like their own (the same relation in other words)."""
    cases = [EditCase(f"{r}-{n}", q.format(s), "new", subject=s, paraphrases=[p.format(s)])
             for r, (q, p) in enumerate(ZSRE_LIKE) for n, s in enumerate(("Ann Smith", "Bo Li"))]
    # Each case's own relation's other wording ("...'s career?" for an occupation edit) must never be drawn.
    sibling = {c.id: {t.format(c.subject) for t in ZSRE_LIKE[int(c.id[0])]} for c in cases}
    encode = CachedEncoder(TextEncoder("all-MiniLM-L6-v2", device="cpu"), progress=False)
    config = ScopeDataConfig(near_depth=2, near_per_question=0, relation_paraphrase=1, other_relation=3, nq_per_case=0)
    others = [p for p in build_pairs(cases, [], encode, config, progress=False) if p.kind == "other-relation"]
    facts = {c.fact: c for c in cases}
    # Up to 3 a case (short wordings with "X" for the subject read alike, so the filter drops a few of another relation too).
    drawn = {c.id: sum(facts[p.edit_text] is c for p in others) for c in cases}
    assert all(1 <= n <= 3 for n in drawn.values()) and sum(drawn.values()) > len(cases)
    for p in others:
        case = facts[p.edit_text]
        assert p.label == 0 and case.subject in p.question and p.question not in sibling[case.id]
    # With the answer-type classifier, only wordings asking for another kind of answer: "Which team does X play for?"
    # (a group) is no negative for an edit of what X is named after (a person) any more, nor the reverse.
    answer_types = AnswerTypeClassifier.load()

    def kind(question: str, subject: str) -> int:  # of the wording, the subject put as "X"
        return int(answer_types.probabilities(answer_types.features([question.replace(subject, "X")], encode)).argmax())

    narrowed = [p for p in build_pairs(cases, [], encode, config, progress=False, answer_types=answer_types) if p.kind == "other-relation"]
    assert 0 < len(narrowed) < len(others)
    assert all(kind(p.question, facts[p.edit_text].subject) != kind(facts[p.edit_text].question, facts[p.edit_text].subject) for p in narrowed)


def _write_counterfact(path: Path, cases: list[EditCase]) -> Path:
    with gzip.open(path, "wt") as fh:
        for c in cases:
            fh.write(json.dumps({"case_id": c.id, "prompt": c.question, "target_new": c.target_new, "subject": c.subject,
                                 "ground_truth": c.target_old, "rephrase_prompt": c.paraphrases[0],
                                 "locality_prompt": c.neighbors[0].question, "locality_ground_truth": c.neighbors[0].answer}) + "\n")
    return path


def test_evaluation_only_files_are_refused(tmp_path: Path) -> None:
    for name in ("counterfact-test.jsonl.gz", "nq-open-test.jsonl.gz"):
        with pytest.raises(ValueError, match="evaluation-only"):
            check_not_evaluation_only(tmp_path / name)
    check_not_evaluation_only(tmp_path / "counterfact-train.jsonl.gz")
    # zsre-1k is where zsRE is measured: one fold of it may train, never the whole file.
    for fold in (None, (0, 1)):
        with pytest.raises(ValueError, match="train on one fold"):
            check_not_evaluation_only(tmp_path / "zsre-1k.jsonl.gz", fold)
    check_not_evaluation_only(tmp_path / "zsre-1k.jsonl.gz", (0, 2))
    test_file = _write_counterfact(tmp_path / "counterfact-test.jsonl.gz", toy_cases())
    config = ScopeTrainingConfig(out=tmp_path / "out", train=test_file, val=test_file, nq_train=None, nq_val=None)
    with pytest.raises(ValueError, match="evaluation-only"):
        config.check()


@pytest.mark.parametrize("options, message", [
    (["--no-nq", "--nq-train", "nq.jsonl.gz"], "--no-nq leaves out what --nq-train names: give one of them"),
    (["--no-nq", "--nq-val", "nq.jsonl.gz"], "--no-nq leaves out what --nq-val names"),
    (["--no-also-train", "--also-train", "z.jsonl.gz"], "--no-also-train leaves out what --also-train names"),
    (["--no-answer-types", "--answer-types", "a.json"], "--no-answer-types leaves out what --answer-types names"),
    (["--no-nq", "--nq-per-case", "2"], "--no-nq leaves out what --nq-per-case names"),
    (["--no-also-train", "--also-train-fold", "1/2"], "--no-also-train leaves out what --also-train-fold names"),
])
def test_an_option_its_no_switch_would_ignore_is_refused(options: list[str], message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "out"), *options]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_train_end_to_end(tiny_encoder_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = toy_cases()
    train = _write_counterfact(tmp_path / "counterfact-train.jsonl.gz", cases[:32])
    val = _write_counterfact(tmp_path / "counterfact-val.jsonl.gz", cases[32:])
    out = tmp_path / "scope"
    zsre = tmp_path / "zsre-toy.jsonl"
    zsre.write_text("".join(json.dumps({"subject": f"Firm{i}", "src": f"What does Firm{i} make?", "rephrase": f"Firm{i} makes what?",
                                        "alt": f"thing{i}", "answers": ["x"], "loc": f"nq question: who is person{i}", "loc_ans": "y"}) + "\n"
                            for i in range(20)))
    config = ScopeTrainingConfig(out=out, train=train, val=val, nq_train=None, nq_val=None, encoder=tiny_encoder_path,
                                 also_train=zsre, also_train_fold="0/2", also_train_repeat=3, answer_types=None,
                                 steps=6, batch_size=8, lr=1e-3, max_length=32, val_every=3, val_quick=20, threads=1, device="cpu")
    record = train_scope_classifier(config, progress=False)
    # Only fold 0 of the zsRE cases trains (question + paraphrase + neighbour + near-edit pairs each), three times over.
    fold = sum(in_fold(c, (0, 2)) for c in read_cases(zsre))
    also = record["data"]["also_train"]
    assert also["by_kind"]["question"] == also["by_kind"]["paraphrase"] == fold
    assert record["data"]["train"]["by_kind"]["question"] == 32 + 3 * fold
    # Positives weigh as much as negatives over the pairs as trained, the repeated ones too.
    trained = record["data"]["train"]
    assert record["pos_weight"] == round((trained["pairs"] - trained["positives"]) / trained["positives"], 4)
    # Each step logs the learning rate it used: the first is 0, warming up.
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["lr"] == 0.0
    assert is_scope_classifier(out) and (out / "TRAINING.md").is_file() and (out / "metrics.jsonl").is_file()
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["threshold"] == record["threshold"] and 0.0 <= saved["threshold"] <= 1.0
    assert saved["similarity_threshold"] == record["similarity_threshold"]
    assert record["data"]["val"]["pairs"] > 0 and 0.0 <= record["classifier"]["val"]["auc"] <= 1.0
    assert len(record["val_curve"]) == 1
    assert "similarity" in (out / "TRAINING.md").read_text()
    # A non-empty --out is a user's mistake: an error line and status 2, not a traceback.
    assert main(["--out", str(out), "--train", str(train), "--val", str(val), "--no-nq"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "new"), "--train", str(train), "--val", str(val), "--no-nq", "--also-train", str(zsre),
                 "--also-train-fold", "2/2"]) == 2
    assert "a fold is I/N" in capsys.readouterr().err
    # The shipped answer-type classifier reads MiniLM's vectors, not the tiny encoder's: said before anything is made.
    assert main(["--out", str(tmp_path / "other"), "--train", str(train), "--val", str(val), "--no-nq", "--encoder", tiny_encoder_path]) == 2
    assert "--no-answer-types" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main(["--out", str(tmp_path / "other"), "--train", str(train), "--val", str(val), "--no-nq", "--weight-decay", "-0.1"]) == 2
    assert "--weight-decay must be 0 or more, got -0.1" in capsys.readouterr().err
    # A run that fails once its folder is made leaves nothing there (here its first step fails).
    failing = replace(config, out=tmp_path / "failed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scope_training, "scope_loss", lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError) as failed:
            train_scope_classifier(failing, progress=False)
    assert not failing.out.exists() and failed.value.__notes__ == [f"the unfinished run's files are removed from {failing.out}"]


@pytest.mark.skipif(not is_scope_classifier(SHIPPED), reason="no shipped scope classifier")
def test_shipped_classifier_separates_obvious_pairs() -> None:
    model = ScopeClassifier.from_pretrained(SHIPPED, device="cpu")
    fact = "The mother tongue of Danielle Darrieux is English."
    scores = model.scores([fact] * 4, ["The mother tongue of Danielle Darrieux is", "Danielle Darrieux's native language is",
                                       "who won the world cup in 2010", "The twin city of Wellington is"])
    assert scores[0] >= model.threshold and scores[1] >= model.threshold
    assert scores[2] < model.threshold and scores[3] < model.threshold
    assert model.similarity_threshold is not None and -1 <= model.similarity_threshold <= 1
