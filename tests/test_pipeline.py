"""The answering path end to end on tiny models: pipeline, `rag-serve ask`, `rag-eval qa` and its metrics."""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import make_documents
from indexer.index import Index, build_index
from indexer.encoder import TextEncoder
from rag.command_line import run_command
from rag.fid_reader import FiDReader
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from rag.span_reader import SpanReader
from serve.app import ServeSettings, create_app
from serve.cli import main as serve_main
from trainer.cli import main as eval_main
from trainer.evaluate import evaluate_qa
from trainer.qa_data import QARecord, read_qa, sample
from trainer.qa_metrics import contains_answer, exact_match, f1_score, normalize_answer


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "idx"
    build_index(out, make_documents(12), tiny_encoder)
    return out


@pytest.fixture(scope="module")
def pipeline(index_dir: Path, tiny_reader_path: str) -> Pipeline:
    return Pipeline(Index.open(index_dir, readonly=True), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=6))


@pytest.fixture()
def qa_file(tmp_path: Path) -> Path:
    rows = [{"id": f"q{i}", "question": f"what is topic{i}?", "answers": [f"topic{i}"], "gold_ids": [f"doc-{i}"]} for i in range(6)]
    rows.append({"id": "q-nogold", "question": "anything about topic7?", "answers": ["x"]})
    path = tmp_path / "qa.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_ask_returns_answer_with_its_passages(pipeline: Pipeline) -> None:
    answer = pipeline.ask("what is topic3?", k=3, mode="hybrid")
    assert isinstance(answer.text, str) and "\n" not in answer.text
    assert len(answer.passages) == 3 and answer.passages[0].doc_id == "doc-3"
    assert set(answer.timings) == {"edit_ms", "retrieve_ms", "read_ms", "total_ms"} and answer.edit is None
    body = answer.to_json()
    assert body["passages"][0]["doc_id"] == "doc-3" and body["answer"] == answer.text


def test_ask_many_matches_ask(pipeline: Pipeline) -> None:
    questions = ["what is topic1?", "tell me about topic5", "topic9 please"]
    batched = pipeline.ask_many(questions, k=2, mode="hybrid")
    single = [pipeline.ask(q, k=2, mode="hybrid") for q in questions]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [[p.id for p in a.passages] for a in batched] == [[p.id for p in a.passages] for a in single]
    assert pipeline.ask(questions[0], k=np.int64(2), mode="hybrid").text == single[0].text  # as Index.search takes it
    from_generator = pipeline.ask_many((q for q in questions), k=2, mode="hybrid")  # read once, not once per step
    assert [a.text for a in from_generator] == [a.text for a in batched]
    with pytest.raises(TypeError, match=r"ask_many\(\['what is topic1\?'\]\)"):  # not a question per character
        pipeline.ask_many("what is topic1?", k=2)


def test_closed_book_needs_no_index(tiny_reader_path: str) -> None:
    answer = Pipeline(None, DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4)).ask("who?", k=0)
    assert answer.passages == []
    with pytest.raises(ValueError, match="no index"):
        Pipeline(None, DecoderReader(tiny_reader_path, device="cpu")).ask("who?", k=3)


@pytest.mark.parametrize("question, k, mode, message", [
    ("   ", 5, "hybrid", "empty question"),
    ("ok?", -1, "hybrid", "k must be"),
    ("ok?", 1000, "hybrid", "k must be"),
    ("ok?", True, "hybrid", "k must be an integer"),
    ("ok?", 5, "fuzzy", "unknown mode"),
])
def test_bad_requests_are_rejected(pipeline: Pipeline, question: str, k: int, mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.ask(question, k=k, mode=mode)


def test_trained_query_encoder_is_used(index_dir: Path, tiny_reader_path: str, tiny_encoder_path: str) -> None:
    """A DualEncoder with the index's weights retrieves exactly what the index's own encoder does."""
    index = Index.open(index_dir, readonly=True)
    with_retriever = Pipeline(index, DecoderReader(tiny_reader_path, device="cpu"), DualEncoder(tiny_encoder_path))
    questions = ["what is topic4?", "topic11"]
    ours = with_retriever.retrieve(questions, 5, "dense")
    plain = index.search_many(questions, k=5, mode="dense")
    assert [[h.id for h in hits] for hits in ours] == [[h.id for h in hits] for hits in plain]


def test_a_saved_query_encoder_embeds_as_the_trained_one(tiny_encoder_path: str, tmp_path: Path) -> None:
    """The sentence-transformers files travel with it: CLS pooling, no normalisation, 6 tokens at most."""
    source = tmp_path / "st-encoder"
    shutil.copytree(tiny_encoder_path, source)
    (source / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                                                     {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 6}))
    trained = DualEncoder(str(source), shared=False)
    torch.nn.init.normal_(trained.query_model.embeddings.word_embeddings.weight)  # "training" moved the query side
    trained.save_query_encoder(tmp_path / "saved")
    saved = DualEncoder(str(tmp_path / "saved"))
    assert (saved.pooling, saved.normalize, saved.max_length) == ("cls", False, 6)
    texts = ["a question about topic one that runs past six tokens", "short"]
    assert np.allclose(saved.encode_queries(texts), trained.encode_queries(texts), atol=1e-6)
    assert np.allclose(TextEncoder(str(tmp_path / "saved"), device="cpu")(texts), trained.encode_queries(texts), atol=1e-5)


def test_metrics_follow_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower", ["Eiffel Tower", "x"]) == 1.0
    assert exact_match("eiffel", ["Eiffel Tower"]) == 0.0
    assert f1_score("eiffel", ["Eiffel Tower"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_score("paris france", ["Paris", "Lyon France"]) == pytest.approx(2 / 3)
    # An answer that normalises to nothing is no answer: an empty prediction does not match it (TriviaQA lists "" among
    # the aliases of 15% of its questions).
    assert exact_match("", ["Paris", ""]) == 0.0 and f1_score("", ["Paris", ""]) == 0.0 and f1_score("The", ["a"]) == 0.0
    assert exact_match("Paris", ["", "paris"]) == 1.0 and f1_score("Paris", ["", "paris"]) == 1.0
    assert contains_answer("It was built in 1889 by Eiffel.", ["1889"])
    assert not contains_answer("In 18890 units", ["1889"])


def test_qa_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q?", "answers": ["a"]}\n{"id": 2, "question": "q?"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*missing field 'answers'"):
        read_qa(bad)
    for line, problem in [('{"question": "q?", "answers": []}', "non-empty list"), ("[1, 2]", "a JSON list, not an object"),
                          ('{"question": 5, "answers": ["a"]}', "question is a int, not a string"),
                          ('{"question": "\\u0000", "answers": ["a"]}', "empty question"),
                          ('{"question": "q?", "answers": ["a"], "gold_ids": {"d": 1}}', "gold_ids must be a list")]:
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:1: bad QA record \\(.*{problem}"):
            read_qa(bad)
    # A bare string is one answer, or one gold id: not a list of its characters.
    bad.write_text('{"question": "q?", "answers": "Paris", "gold_ids": "vital-6311"}\n')
    assert read_qa(bad)[0].answers == ["Paris"] and read_qa(bad)[0].gold_ids == ["vital-6311"]
    with pytest.raises(ValueError, match=f"QA file {tmp_path} is a folder"):
        read_qa(tmp_path)
    # A .gz that is not gzip, or is cut short, says which file and what, not a traceback of gzip's.
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"question": "q?", "answers": ["a"]}\n' * 50)[:60])
    for broken, problem in [(bad.rename(tmp_path / "plain.jsonl.gz"), "Not a gzipped file"), (cut, "ended before")]:
        with pytest.raises(ValueError, match=rf"QA file {broken} cannot be read after line \d+ \(.*{problem}"):
            read_qa(broken)


def test_sample_is_seeded_and_ordered() -> None:
    records = [QARecord(str(i), f"q{i}", ["a"]) for i in range(100)]
    first, again, other = sample(records, 10, 0), sample(records, 10, 0), sample(records, 10, 1)
    assert first == again and first != other and len(first) == 10
    assert [int(r.id) for r in first] == sorted(int(r.id) for r in first)
    assert sample(records, None) == records and sample(records, 1000) == records


def test_rag_eval_qa_prints_metrics(index_dir: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    predictions = tmp_path / "pred.jsonl"
    code = eval_main(["qa", "--index", str(index_dir), "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "2",
                      "--mode", "sparse", "--device", "cpu", "--predictions", str(predictions)])
    out, _ = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    expected = {"n", "em", "f1", "recall@1", "recall@5", "recall@20", "answer_recall@5", "source_gold", "latency_p50_ms",
                "latency_p95_ms"}
    assert expected <= set(summary) and summary["n"] == 7 and summary["n_with_gold_ids"] == 6
    # Sparse search puts the document naming topic{i} first: every gold document is found at rank 1.
    assert summary["recall@1"] == 1.0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert summary["em"] == pytest.approx(sum(exact_match(r["prediction"], r["answers"]) for r in rows) / 7)
    # Each gold passage contains its answer "topic{i}"; the last question's answer "x" is in no passage.
    assert summary["answer_recall@5"] == pytest.approx(6 / 7)
    assert all(1 <= len(r["passages"]) <= 2 for r in rows)  # BM25 returns only passages sharing a word
    assert summary["source_gold"] is None and all(r["source"] is None for r in rows)  # a generative reader names none


def test_rag_eval_qa_scores_the_passages_a_span_reader_cites(index_dir: Path, qa_file: Path, tiny_encoder_path: str,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64).save_pretrained(tmp_path / "span")
    predictions = tmp_path / "pred.jsonl"
    assert eval_main(["qa", "--index", str(index_dir), "--qa", str(qa_file), "--reader", str(tmp_path / "span"), "--k", "1",
                      "--mode", "sparse", "--device", "cpu", "--predictions", str(predictions)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    # One passage read, and sparse search ranks the gold one first: every answer cites it.
    assert summary["recall@1"] == 1.0 and summary["source_gold"] == 1.0
    assert all(r["source"] == r["passages"][0] and r["source_is_gold"] for r in rows if r["has_gold_ids"])


def test_rag_eval_qa_answers_as_the_pipeline_reads_without_edits(pipeline: Pipeline, qa_file: Path) -> None:
    """On an index without edits each prediction, passage list and gold rank is what retrieving 20 deep and reading the top
    k gives, one question at a time: routing answers through the pipeline changed no figure."""
    records = read_qa(qa_file)
    _, rows = evaluate_qa(pipeline, records, k=2, mode="hybrid", progress=False)
    for record, row in zip(records, rows):
        found = pipeline.retrieve([record.question], 20, "hybrid")[0]
        assert row["prediction"] == pipeline.reader.generate([record.question], [found[:2]])[0]
        assert row["passages"] == [h.id for h in found[:2]] and row["edit"] is None
        assert row["first_gold_rank"] == next((i for i, h in enumerate(found) if h.doc_id in record.gold_ids), None)


def test_rag_eval_qa_applies_the_edits_as_ask_does(tmp_path: Path, tiny_encoder: TextEncoder, qa_file: Path, tiny_reader_path: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    """An edit in the index answers the questions in its scope in `rag-eval qa` as in `rag-serve ask`; --scope none ignores it,
    and the other questions are answered alike either way."""
    build_index(tmp_path / "idx", make_documents(12), tiny_encoder)
    index = Index.open(tmp_path / "idx", tiny_encoder)
    edit = index.memory.add("Topic three is now called zeta.", question="what is topic3?", answer="zeta", subject="topic3")
    index.close()
    rows = {}
    for scope in ("classifier", "none"):
        assert eval_main(["qa", "--index", str(tmp_path / "idx"), "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "2",
                          "--scope", scope, "--device", "cpu", "--predictions", str(tmp_path / f"{scope}.jsonl")]) == 0
        capsys.readouterr()
        rows[scope] = [json.loads(line) for line in (tmp_path / f"{scope}.jsonl").read_text().splitlines()]
    edited, plain = rows["classifier"], rows["none"]
    assert (edited[3]["prediction"], edited[3]["edit"], edited[3]["em"]) == ("zeta", edit.id, 0.0)
    assert plain[3]["prediction"] != "zeta" and plain[3]["edit"] is None
    assert [r["prediction"] for i, r in enumerate(edited) if i != 3] == [r["prediction"] for i, r in enumerate(plain) if i != 3]
    # The similarity scope's threshold is a cosine of MiniLM's: this index's encoder is another, so it is refused.
    assert eval_main(["qa", "--index", str(tmp_path / "idx"), "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "2",
                      "--scope", "similarity", "--device", "cpu"]) == 2
    assert "is a cosine of all-MiniLM-L6-v2's vectors" in capsys.readouterr().err


def test_rag_eval_closed_book_has_no_recall(qa_file: Path, tiny_reader_path: str, capsys: pytest.CaptureFixture) -> None:
    code = eval_main(["qa", "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "0", "--limit", "3", "--device", "cpu"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n"] == 3 and summary["recall@5"] is None
    # --with-gold-ids drops the one record without gold_ids before sampling.
    assert eval_main(["qa", "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "0", "--with-gold-ids", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 6 and summary["n_with_gold_ids"] == 6
    # --predictions writes only a new file, but a device is not a file anything could lose.
    assert eval_main(["qa", "--qa", str(qa_file), "--reader", tiny_reader_path, "--k", "0", "--limit", "2", "--device", "cpu",
                      "--predictions", "/dev/null"]) == 0


def test_rag_eval_predictions_are_never_half_written_nor_overwritten(qa_file: Path, tiny_reader_path: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--predictions appears whole once the run is done: a run that fails leaves none (it can be run again as it was), a
    file made meanwhile by another run stays as it is, and a link to nothing is taken, not followed. A bad record is
    named by its line; a pipe reads."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answers": ["a"]}\n{"id": "x\\ud800", "question": "q?", "answers": ["a"]}\n')
    argv = ["qa", "--reader", tiny_reader_path, "--k", "0", "--device", "cpu"]
    assert eval_main([*argv, "--qa", str(bad), "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert f"{bad}:2: bad QA record (id is not valid Unicode" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert eval_main([*argv, "--qa", str(qa_file), "--predictions", str(tmp_path / "link.jsonl")]) == 2
    assert "exists: choose a new file name" in capsys.readouterr().err and not (tmp_path / "nowhere.jsonl").exists()

    import trainer.evaluate

    evaluate_qa = trainer.evaluate.evaluate_qa

    def another_run_writes_first(*args: Any, **kwargs: Any) -> Any:
        (tmp_path / "taken.jsonl").write_text("another run's rows\n")
        return evaluate_qa(*args, **kwargs)

    monkeypatch.setattr(trainer.evaluate, "evaluate_qa", another_run_writes_first)
    assert eval_main([*argv, "--qa", str(qa_file), "--limit", "2", "--predictions", str(tmp_path / "taken.jsonl")]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 2 and "was made by something else during this run" in err
    assert (tmp_path / "taken.jsonl").read_text() == "another run's rows\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no part file left beside it
    monkeypatch.undo()
    read, write = os.pipe()
    os.write(write, bad.read_bytes().splitlines(keepends=True)[0])
    os.close(write)
    try:
        assert eval_main([*argv, "--qa", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert json.loads(capsys.readouterr().out)["n"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--qa", "missing.jsonl", "--k", "0"], "QA file not found"),
    (["--qa", "QA", "--k", "3"], "--index is required"),
    (["--qa", "QA", "--k", "0", "--limit", "0"], "--limit must be at least 1"),
    (["--qa", "QA", "--k", "0", "--adapter", "nowhere"], "adapter nowhere: no such folder"),
    (["--qa", "QA", "--k", "0", "--predictions", "/nonexistent/dir/p.jsonl"], "no folder /nonexistent/dir"),
    (["--qa", "QA", "--k", "0", "--predictions", "QA"], "exists: choose a new file name"),
])
def test_rag_eval_bad_input(argv: list[str], message: str, qa_file: Path, tiny_reader_path: str,
                            capsys: pytest.CaptureFixture) -> None:
    argv = [str(qa_file) if a == "QA" else a for a in argv]
    assert eval_main(["qa", "--reader", tiny_reader_path, *argv]) == 2
    assert message in capsys.readouterr().err


def test_without_k_each_reader_reads_its_own_number_of_passages(index_dir: Path, tiny_reader_path: str, tiny_fid_reader_path: str,
                                                                 tiny_encoder_path: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The span reader reads the k its training chose (kept in its folder), a causal LM 5 passages, a FiD reader 10;
    `rag-serve ask` without --k and the Python API alike."""
    index = Index.open(index_dir, readonly=True)
    assert len(Pipeline(index, DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=2)).ask("what is topic2?").passages) == 5
    assert len(Pipeline(index, FiDReader(tiny_fid_reader_path, device="cpu")).ask("what is topic2?").passages) == 10
    SpanReader.from_encoder(tiny_encoder_path, device="cpu", max_length=64, k=7).save_pretrained(tmp_path / "span")
    assert len(Pipeline(index, SpanReader.from_pretrained(tmp_path / "span", device="cpu")).ask("what is topic2?").passages) == 7
    assert serve_main(["ask", "--index", str(index_dir), "--reader", str(tmp_path / "span"), "--device", "cpu", "--json", "what is topic2?"]) == 0
    assert len(json.loads(capsys.readouterr().out)["passages"]) == 7


def test_a_span_readers_answer_names_the_passage_it_was_read_from(index_dir: Path, tiny_encoder_path: str,
                                                                 pipeline: Pipeline, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    index = Index.open(index_dir, readonly=True)
    span = Pipeline(index, SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64))
    # depth 6, k 2: the answer comes from the two passages read, never from the four only listed.
    for answer in span.ask_many(["what is topic2?", "what is topic5?", "what is topic9?"], k=2, depth=6):
        read = {p.id: p.text for p in answer.passages[:2]}
        source = answer.source
        assert source.passage in read and answer.text and read[source.passage][source.start : source.end] == answer.text
        assert answer.to_json()["source"] == {"passage": source.passage, "start": source.start, "end": source.end}
    assert pipeline.ask("what is topic2?", k=2).source is None  # a generative reader writes from all of them
    SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64).save_pretrained(tmp_path / "span")
    assert serve_main(["ask", "--index", str(index_dir), "--reader", str(tmp_path / "span"), "--device", "cpu", "--k", "3",
                       "what is topic2?"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(", the answer's source)" in line for line in lines) == 1 and lines[1].startswith("  [")


def test_rag_serve_ask(index_dir: Path, tiny_reader_path: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["ask", "--index", str(index_dir), "--reader", tiny_reader_path, "--k", "2", "--device", "cpu"]
    assert serve_main([*argv, "--json", "what is topic2?"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["question"] == "what is topic2?" and len(body["passages"]) == 2
    assert {"id", "doc_id", "title", "text", "score"} == set(body["passages"][0])
    assert serve_main([*argv, "what is topic2?"]) == 0
    text = capsys.readouterr().out
    assert "[1] Title 2 (doc-2#0" in text
    assert serve_main([*argv, "  "]) == 2
    assert "empty question" in capsys.readouterr().err
    assert serve_main(["ask", "--index", "/nonexistent", "--reader", tiny_reader_path, "q?"]) == 2



def test_an_index_without_bm25_answers_dense_unless_asked_otherwise(tmp_path: Path, tiny_encoder: TextEncoder, tiny_reader_path: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    build_index(tmp_path / "idx", make_documents(6), tiny_encoder, sparse=False)
    argv = ["ask", "--index", str(tmp_path / "idx"), "--reader", tiny_reader_path, "--k", "2", "--device", "cpu", "--json"]
    assert serve_main([*argv, "what is topic2?"]) == 0
    assert len(json.loads(capsys.readouterr().out)["passages"]) == 2
    assert serve_main([*argv, "--mode", "hybrid", "what is topic2?"]) == 2
    assert "mode 'hybrid' needs BM25" in capsys.readouterr().err
    # The server: its default must be dense there, and a question asking for BM25 is the client's mistake.
    pipeline = Pipeline(Index.open(tmp_path / "idx", tiny_encoder), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=2))
    assert pipeline.ask("what is topic2?", k=2).passages == pipeline.ask("what is topic2?", k=2, mode="dense").passages  # Python too
    with pytest.raises(ValueError, match="needs BM25, and this index was built without it"):
        create_app(pipeline, ServeSettings(mode="hybrid"))
    with TestClient(create_app(pipeline, ServeSettings(mode="dense"))) as client:
        assert client.post("/ask", json={"question": "what is topic2?", "k": 1}).status_code == 200
        for mode in ("sparse", "hybrid"):
            response = client.post("/ask", json={"question": "what is topic2?", "mode": mode})
            assert response.status_code == 422 and "use mode dense" in response.json()["error"]


@pytest.mark.parametrize("option, message", [(["--k", "101"], "--k must be at most 100"),
                                             (["--max-wait-ms", "inf"], "--max-wait-ms must be from 0 to 10,000"),
                                             (["--max-wait-ms", "nan"], "--max-wait-ms must be from 0 to 10,000"),
                                             (["--port", "99999"], "--port must be from 0 to 65535"),
                                             (["--max-k", "101"], "--max-k must be from 0 to 100"),
                                             (["--token", ""], "--token is blank"),
                                             (["--k", "5", "--max-k", "3"], "--k 5 is over --max-k 3")])
def test_rag_serve_run_refuses_settings_no_request_could_use(option: list[str], message: str, index_dir: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert serve_main(["run", "--index", str(index_dir), "--port", "0", *option]) == 2
    assert message in capsys.readouterr().err

def test_rag_serve_run_refuses_adapters_its_reader_cannot_take(index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The shipped span reader takes no adapter: refused at start, not on every /ask that names one."""
    assert serve_main(["run", "--index", str(index_dir), "--port", "0", "--adapters", str(tmp_path)]) == 2
    assert "--adapters: adapters chosen per question apply to the decoder-only reader" in capsys.readouterr().err
    (tmp_path / "file").write_text("mine")
    assert serve_main(["run", "--index", str(index_dir), "--port", "0", "--adapters", str(tmp_path / "file")]) == 2
    assert "a file, not a folder (give the folder that holds the adapter folders)" in capsys.readouterr().err

def test_a_file_the_system_refuses_is_an_error_message_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Read-only --out folders, a folder where a file should be: `prog: error: PATH: reason`, exit 2."""
    assert run_command("rag-train", argparse.Namespace(run=lambda _: open(tmp_path, "w"))) == 2
    assert capsys.readouterr().err == f"rag-train: error: {tmp_path}: Is a directory\n"
