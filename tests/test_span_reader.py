"""The extractive span reader on a tiny random BERT: spans come from the passages, batching and saving
change nothing, training learns, and bad input is refused with a clear message."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.span_reader import MARKER_FILE, SCORINGS, PassageSpan, ReadAnswer, SpanReader, choose_answer, is_span_reader
from trainer.qa_data import ContextPassage, QARecord
from trainer.span_data import FORMAT as SPAN_FORMAT, SpanDataConfig, SpanExample, locate_answer, make_example, make_span_data, mix_records, read_span_data
from trainer.shared_data import SHARED_DATA
from trainer.span_training import SpanTrainingConfig, dev_sweep, span_loss, span_targets, train_span_reader

P = ContextPassage
PASSAGES = [
    [P("Paris", "Paris is the capital and most populous city of France."), P("Berlin", "Berlin is the capital of Germany.")],
    [P("", "The Nile is a major north-flowing river in northeastern Africa.")],
    [],
    [P("Moon", "The Moon is Earth's only natural satellite. It orbits at an average distance of 384,400 km.")],
]
QUESTIONS = ["What is the capital of France?", "Where is the Nile?", "Closed book?", "How far is the Moon?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def reader(tiny_encoder_path: str) -> SpanReader:
    return SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64, max_answer_tokens=8)


def test_answers_are_substrings_of_the_passage_they_name(reader: SpanReader) -> None:
    answers = reader.answer(QUESTIONS, PASSAGES)
    assert len(answers) == 4 and answers[2] == ReadAnswer("", None)
    for answer, passages in zip(answers, PASSAGES):
        if passages:
            assert answer.text and answer.text == passages[answer.passage].text[answer.start : answer.end]
    assert reader.generate(QUESTIONS, PASSAGES) == [a.text for a in answers]
    # Every passage's best span lies in its text (not the title or question) and within the length limit.
    for spans, passages in zip(reader.read(QUESTIONS, PASSAGES), PASSAGES):
        assert len(spans) == len(passages)
        for span, p in zip(spans, passages):
            assert 0 <= span.start_char < span.end_char <= len(p.text)
            assert len(reader.tokenizer(p.text[span.start_char : span.end_char], add_special_tokens=False)["input_ids"]) <= 8


def test_batched_equals_one_at_a_time(reader: SpanReader) -> None:
    batched = reader.generate(QUESTIONS, PASSAGES)
    assert batched == [reader.generate([q], [p])[0] for q, p in zip(QUESTIONS, PASSAGES)]


def test_save_and_load_give_identical_answers(reader: SpanReader, tmp_path: Path) -> None:
    reader.config.scoring = "span-null"
    reader.save_pretrained(tmp_path / "r")
    assert is_span_reader(tmp_path / "r") and not is_span_reader(tmp_path)
    loaded = SpanReader.from_pretrained(tmp_path / "r", device="cpu")
    assert loaded.config == reader.config and next(loaded.encoder.parameters()).dtype == torch.float32
    # The encoder is stored in float16: compare against the same rounding of the original weights.
    reader.encoder.half().float()
    assert loaded.generate(QUESTIONS, PASSAGES) == reader.generate(QUESTIONS, PASSAGES)
    a, b = loaded.read(QUESTIONS, PASSAGES)[0][0], reader.read(QUESTIONS, PASSAGES)[0][0]
    assert a.span_logit == pytest.approx(b.span_logit, abs=1e-4) and a.relevance == pytest.approx(b.relevance, abs=1e-4)


def test_bad_input_is_refused(reader: SpanReader, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 questions but 1 passage lists"):
        reader.generate(["a?", "b?"], [[]])
    with pytest.raises(ValueError, match="non-empty string"):
        reader.generate(["  "], [[PASSAGES[0][0]]])
    with pytest.raises(TypeError, match="not one string"):
        reader.generate("what?", [[PASSAGES[0][0]]])
    with pytest.raises(TypeError, match=r"\.title and \.text"):
        reader.generate(["what?"], [["just a string"]])
    with pytest.raises(ValueError, match="not a span reader folder"):
        SpanReader.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown scoring"):
        SpanReader.from_encoder(reader.name, scoring="best")
    (tmp_path / MARKER_FILE).write_text("{not json")
    assert not is_span_reader(tmp_path)


def test_vote_lets_agreeing_passages_win() -> None:
    passages = [P("", "Answer: Lyon."), P("", "It is Paris."), P("", "paris, says another.")]
    spans = [PassageSpan(0, 8, 12, 5.0, 0.0, -0.1, 1.0), PassageSpan(1, 6, 11, 4.0, 0.0, -0.2, 0.5),
             PassageSpan(2, 0, 5, 4.0, 0.0, -0.3, 0.5)]
    assert choose_answer(spans, passages, "joint") == ReadAnswer("Lyon", 0, 8, 12)
    # 2 x ~0.27 beats ~0.45; the better-scored spelling, and where it was read
    assert choose_answer(spans, passages, "joint-vote") == ReadAnswer("Paris", 1, 6, 11)
    assert choose_answer([], [], "joint-vote") == ReadAnswer("", None)
    # A span with spaces around its words: the answer and its offsets leave them out.
    spaced = choose_answer([PassageSpan(0, 5, 13, 1.0, 0.0, -0.1, 1.0)], [P("", "It is  Paris  now")], "joint")
    assert spaced == ReadAnswer("Paris", 0, 7, 12)


def test_locate_answer_respects_words_and_spacing() -> None:
    assert locate_answer("In 1990, and 19901.", ["1990"]) == (3, 7)
    assert locate_answer("the year 19901", ["1990"]) is None
    text = "owned by Tracinda Corporation (16.1%) T. Rowe Price"
    start, end = locate_answer(text, ["Tracinda Corporation ( 16.1 % ) T. Rowe Price"])
    assert text[start:end] == "Tracinda Corporation (16.1%) T. Rowe Price"
    assert locate_answer("The Great Wall", ["great wall"]) == (4, 14)


def example(answer: str = "Paris") -> SpanExample:
    text = PASSAGES[0][0].text
    start = text.index(answer)
    return SpanExample(QUESTIONS[0], PASSAGES[0][0], start, start + len(answer), (PASSAGES[0][1], PASSAGES[1][0]))


def test_targets_point_at_the_answer_tokens_and_cls(reader: SpanReader) -> None:
    encoded, starts, ends, truncated = span_targets(reader, [example("most populous city")])
    assert truncated == 0 and starts.tolist()[1:] == [0, 0] and ends.tolist()[1:] == [0, 0]
    text = PASSAGES[0][0].text
    assert text[int(encoded.offsets[0, starts[0], 0]) : int(encoded.offsets[0, ends[0], 1])] == "most populous city"


def test_training_lowers_the_loss_and_overfits_one_example(reader: SpanReader) -> None:
    torch.manual_seed(0)
    batch = [example("most populous city")]
    optimizer = torch.optim.AdamW(reader.parameters(), lr=3e-3)
    reader.train()
    losses = []
    for _ in range(40):
        loss, _ = span_loss(reader, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4
    for scoring in SCORINGS:
        reader.config.scoring = scoring
        assert reader.generate([QUESTIONS[0]], [[PASSAGES[1][0], PASSAGES[0][1], PASSAGES[0][0]]]) == ["most populous city"]


def test_make_example_finds_the_gold_passage_and_clean_negatives(tiny_encoder: TextEncoder, tmp_path: Path) -> None:
    import random

    index_dir = tmp_path / "idx"
    build_index(index_dir, make_documents(8), tiny_encoder)
    index = Index.open(index_dir, readonly=True)
    hits = index.search("topic3 alpha", k=8, mode="sparse")
    found = make_example(index, QARecord("q", "which topic?", ["topic3"], ["doc-3"]), hits, 2, random.Random(0))
    assert found is not None and found.positive.text[found.answer_start : found.answer_end] == "topic3"
    assert len(found.negatives) == 2 and all("topic3" not in n.text for n in found.negatives)
    assert make_example(index, QARecord("q", "which?", ["nowhere"], ["doc-3"]), hits, 2, random.Random(0)) is None
    assert make_example(index, QARecord("q", "which?", ["topic3"]), hits, 2, random.Random(0)) is None


def test_mix_takes_files_in_turn() -> None:
    big = [QARecord(f"b{i}", "q", ["a"]) for i in range(50)]
    small = [QARecord(f"s{i}", "q", ["a"]) for i in range(3)]
    mixed = mix_records({"big": big, "small": small}, 10, seed=0)
    assert len(mixed) == 10 and sum(r.id.startswith("s") for r in mixed) == 3


def test_data_then_training_end_to_end(tiny_encoder: TextEncoder, tiny_encoder_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Data made with the index, then a few training steps from the file alone: checkpoints, dev sweep, a loadable folder;
    a run interrupted after its first checkpoint leaves that checkpoint, from which a new run trains on."""
    index_dir = tmp_path / "idx"
    build_index(index_dir, make_documents(12), tiny_encoder)
    train_file = tmp_path / "tiny-train.jsonl.gz"
    with gzip.open(train_file, "wt") as fh:
        for i in range(12):
            fh.write(json.dumps({"id": f"q{i}", "question": f"which topic is number {i}?", "answers": [f"topic{i}"],
                                 "gold_ids": [f"doc-{i}"]}) + "\n")
    data_file = tmp_path / "data.jsonl.gz"
    header = make_span_data(SpanDataConfig(train=[train_file], index=index_dir, questions=100, dev_size=4, mode="sparse",
                                           command=["test"]), Index.open(index_dir, readonly=True), data_file, progress=False)
    assert header["examples"] == 8 and header["dev_questions"] == {"tiny-train": 4}
    made = data_file.read_bytes()
    with pytest.raises(ValueError, match="exists: choose a new file name"):  # the data a reader was trained on stays
        make_span_data(SpanDataConfig(train=[train_file], index=index_dir, questions=3, mode="dense"), Index.open(index_dir, readonly=True),
                       data_file, progress=False)
    assert data_file.read_bytes() == made
    with pytest.raises(ValueError, match="no training question left: --dev-size 12"):
        make_span_data(SpanDataConfig(train=[train_file], index=index_dir, dev_size=12, mode="sparse"), Index.open(index_dir, readonly=True),
                       tmp_path / "none.jsonl.gz", progress=False)
    data = read_span_data(data_file)
    assert len(data.examples) == 8 and all(1 <= len(q.passages) <= 10 for q in data.dev["tiny-train"])
    dev_ids = {q.record.id for q in data.dev["tiny-train"]}
    assert not dev_ids & {f"q{int(e.question.split()[-1][:-1])}" for e in data.examples}  # held out means never trained on

    config = SpanTrainingConfig(data=data_file, out=tmp_path / "out", encoder=tiny_encoder_path, steps=4, batch_size=2,
                                max_length=64, dev_every=2, dev_quick=2, device="cpu", command=["test"])
    with pytest.raises(ValueError, match="--batch-size 9 is over the 8 training examples"):
        train_span_reader(replace(config, batch_size=9), progress=False)
    assert not (tmp_path / "out").exists()
    record = train_span_reader(config, progress=False)
    assert record["examples"] == 8 and record["dev_questions"] == {"tiny-train": 4}
    assert record["chosen"]["scoring"] in SCORINGS and record["dev_curve"]
    assert not (tmp_path / "out" / "checkpoint").exists()
    account = (tmp_path / "out" / "TRAINING.md").read_text()
    assert account.startswith("# How this span reader was trained") and "4 questions of tiny-train held out as dev" in account
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 4 + 1  # steps + one dev check
    assert [row["lr"] for row in logged if "lr" in row][0] == 0.0  # the first step's own rate: warming up from 0
    loaded = SpanReader.from_pretrained(tmp_path / "out")
    assert loaded.config.scoring == record["chosen"]["scoring"]
    with pytest.raises(ValueError, match="not empty"):
        train_span_reader(config, progress=False)

    from trainer import span_training

    sweeps = []

    def ctrl_c_in_the_second(*args: object, **kwargs: object) -> Any:
        sweeps.append(args)
        if len(sweeps) == 2:
            raise KeyboardInterrupt
        return dev_sweep(*args, **kwargs)

    argv = ["--data", str(data_file), "--out", str(tmp_path / "cut"), "--encoder", tiny_encoder_path, "--steps", "6", "--batch-size", "2",
            "--max-length", "64", "--dev-every", "2", "--dev-quick", "2", "--device", "cpu"]
    with monkeypatch.context() as patch:
        patch.setattr(span_training, "dev_sweep", ctrl_c_in_the_second)  # Ctrl-C in the quick dev check after the second checkpoint
        assert span_training.main(argv) == 130
    kept = tmp_path / "cut" / "checkpoint"
    assert f"the last checkpoint is kept in {kept}: `rag-train span-reader --init` it" in capsys.readouterr().err
    assert json.loads((kept / "step.json").read_text()) == {"step": 4}  # the second, swapped in for the first
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint", "metrics.jsonl"]
    with monkeypatch.context() as patch:  # stopped in the final dev sweep: the checkpoint has every step
        patch.setattr(span_training, "dev_sweep", ctrl_c_in_the_second)
        sweeps[:] = [()]  # the next sweep, the final one (no quick checks), is the second
        assert span_training.main([*argv[:3], str(tmp_path / "swept"), *argv[4:], "--dev-quick", "0"]) == 130
    assert json.loads((tmp_path / "swept" / "checkpoint" / "step.json").read_text()) == {"step": 6}
    save = SpanReader.save_pretrained

    def ctrl_c_in_the_final_save(self: SpanReader, path: Path, **kwargs: Any) -> None:
        save(self, path, **kwargs)  # the encoder written, the marker too: half a reader if it stayed
        if Path(path) == tmp_path / "saving":
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(SpanReader, "save_pretrained", ctrl_c_in_the_final_save)
        assert span_training.main([*argv[:3], str(tmp_path / "saving"), *argv[4:], "--dev-quick", "0"]) == 130
    assert sorted(p.name for p in (tmp_path / "saving").iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert span_training.main([*argv[:3], str(tmp_path / "on"), *argv[4:], "--init", str(kept), "--weight-decay", "0.05"]) == 0
    assert json.loads((tmp_path / "on" / "training.json").read_text())["config"]["weight_decay"] == 0.05
    assert SpanReader.from_pretrained(tmp_path / "on").config.scoring in SCORINGS
    with pytest.raises(ValueError, match="evaluation file"):
        SpanDataConfig(train=[SHARED_DATA / "qa" / "squad-open-dev.jsonl.gz"], index=index_dir).check()
    with pytest.raises(ValueError, match=r"--negatives 5 are drawn from the top --depth 2 passages \(less the gold ones and those holding the answer\): give a --depth above 5"):
        SpanDataConfig(train=[train_file], index=index_dir, negatives=5, depth=2).check()  # else fewer, without a word
    with pytest.raises(ValueError, match="not a span data file"):
        read_span_data(train_file)


@pytest.mark.parametrize("answer, problem", [([5, 2], r"answer \[5, 2\] is not a span"), ([1, 9], r"answer \[1, 9\] is not a span"),
                                             ([0.5, 2], r"answer \[0\.5, 2\] is not a span"), ([0], r"answer \[0\] is not a span")])
def test_a_span_data_file_with_an_answer_outside_its_passage_is_refused_by_line(answer: list, problem: str, tmp_path: Path) -> None:
    """Else training indexes past the passage's tokens (an IndexError traceback), or trains on a reversed span."""
    path = tmp_path / "spans.jsonl.gz"
    good = {"question": "q?", "positive": ["T", "abcdef"], "answer": [0, 3], "negatives": []}
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"format": SPAN_FORMAT, "version": 1}) + "\n" + json.dumps({"train": good}) + "\n"
                 + json.dumps({"train": {**good, "answer": answer}}) + "\n")
    with pytest.raises(ValueError, match=rf"spans.jsonl.gz is not a span data file .*: line 3: {problem}"):
        read_span_data(path)


def test_command_lines_report_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer import span_data, span_training

    assert span_data.main(["--train", str(tmp_path / "missing.jsonl.gz"), "--index", str(tmp_path), "--out", str(tmp_path / "d.gz")]) == 2
    assert "training file not found" in capsys.readouterr().err
    # An --out that cannot be written is found before the index opens, not after minutes of retrieval.
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "answers": ["a"]}\n')
    (tmp_path / "file").write_text("mine")
    for out, message in ((tmp_path / "file" / "d.gz", f"{tmp_path / 'file'} is a file, not a folder"), (tmp_path, "is a folder")):
        assert span_data.main(["--train", str(tmp_path / "train.jsonl"), "--index", str(tmp_path / "no-index"), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert span_training.main(["--data", str(tmp_path / "missing.jsonl.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "span data file not found" in capsys.readouterr().err
    (tmp_path / "d.jsonl.gz").write_bytes(b"")
    assert span_training.main(["--data", str(tmp_path / "d.jsonl.gz"), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert span_training.main(["--data", str(tmp_path / "d.jsonl.gz"), "--out", str(tmp_path / "d.jsonl.gz")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert span_training.main(["--data", str(tmp_path / "d.jsonl.gz"), "--out", str(tmp_path / "o"), "--warmup", "1"]) == 2
    assert "--warmup is a share of the steps" in capsys.readouterr().err
    assert span_training.main(["--data", str(tmp_path / "d.jsonl.gz"), "--out", str(tmp_path / "o"), "--weight-decay", "-1"]) == 2
    assert "--weight-decay must be 0 or more, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # nan and inf: argparse's own check, by the option's type
        span_training.main(["--data", str(tmp_path / "d.jsonl.gz"), "--out", str(tmp_path / "o"), "--weight-decay", "nan"])
    assert refused.value.code == 2 and "argument --weight-decay: expected a finite number, got 'nan'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's own check: exit status 2, the choices named
        span_data.main(["--train", "x", "--index", "i", "--out", "o", "--mode", "bm25"])
    assert refused.value.code == 2 and "argument --mode: invalid choice: 'bm25'" in capsys.readouterr().err
    from trainer.cli import main_train  # the same commands under rag-train

    assert main_train(["span-reader", "--data", str(tmp_path / "missing.jsonl.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "rag-train: error: span data file not found" in capsys.readouterr().err
    assert main_train(["span-data", "--train", str(tmp_path / "x.jsonl.gz"), "--index", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "training file not found" in capsys.readouterr().err


def test_pipeline_loads_a_span_reader_folder(reader: SpanReader, tiny_encoder: TextEncoder, tmp_path: Path) -> None:
    from rag.pipeline import Pipeline

    build_index(tmp_path / "idx", make_documents(6), tiny_encoder)
    reader.save_pretrained(tmp_path / "reader")
    pipeline = Pipeline.load(tmp_path / "idx", reader=str(tmp_path / "reader"), device="cpu")
    assert isinstance(pipeline.reader, SpanReader)
    answer = pipeline.ask("which topic is topic2?", k=3, mode="sparse")
    assert answer.text and any(answer.text in p.text for p in answer.passages)
    assert pipeline.ask("closed book?", k=0).text == ""  # no passage, no span
    with pytest.raises(ValueError, match="span reader"):
        Pipeline.load(tmp_path / "idx", reader=str(tmp_path / "reader"), constrain_to_passages=True)


def test_span_data_modes_are_the_index_modes() -> None:
    """trainer.span_data writes them out (it must not import FAISS): they must stay the index's."""
    from indexer.index import MODES
    from trainer.span_data import SEARCH_MODES

    assert SEARCH_MODES == MODES


def test_training_imports_no_index_code() -> None:
    """Training from a data file must run where FAISS and tantivy are not installed (a lent GPU machine)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['faiss'] = None; sys.modules['tantivy'] = None\n"
            "import trainer.span_training, rag.span_reader\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
