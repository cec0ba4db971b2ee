"""`rag-train reader` on tiny models: examples keep the gold passage, training learns, outputs load back."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from conftest import make_documents, write_topic_qa
from indexer.index import Index, build_index
from rag.fid_reader import load_generative_reader
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from trainer.cli import main_train
from trainer.qa_data import QARecord, split_by_article, split_train_dev
from trainer.reader_data import build_examples
from trainer.joint_training import training_order
from trainer.reader_training import ReaderTrainingConfig, answer_nll, load_train_dev, train_reader


def test_examples_hold_the_gold_passage_at_a_random_position(topic_index: Path) -> None:
    index = Index.open(topic_index, readonly=True)
    records = [QARecord(f"q{i}", f"unrelated words {i}", [f"topic{i}"], [f"doc-{i}"]) for i in range(12)]
    examples = build_examples(index, records, k=3, seed=0, mode="dense", progress=False)
    assert all(len(e.passages) == 3 for e in examples)
    assert all(e.gold_position is not None and f"topic{i}" in e.passages[e.gold_position].text for i, e in enumerate(examples))
    assert len({e.gold_position for e in examples}) > 1  # not always first
    no_gold = build_examples(index, [QARecord("x", "q", ["nowhere"])], k=2, progress=False)[0]
    assert no_gold.gold_position is None and len(no_gold.passages) == 2


def test_split_train_dev_is_disjoint_and_seeded() -> None:
    records = [QARecord(str(i), f"q{i}", ["a"]) for i in range(50)]
    train, dev = split_train_dev(records, 10, seed=3)
    assert len(dev) == 10 and len(train) == 40 and not {r.id for r in train} & {r.id for r in dev}
    assert split_train_dev(records, 10, seed=3) == (train, dev)


def test_blank_answers_are_left_out_of_training(topic_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose answers are all blank teaches a reader to say nothing (nq-open-train has 20): it is left out of
    training, and a blank answer listed before a real one is never the target. The others keep their order, dev and
    held-out articles stay what they were (the blank record may be the only one about its article), and evaluation
    sets keep every record."""
    rows = [{"id": f"q{i}", "question": f"which topic is number {i}?", "answers": [f"topic{i}"], "gold_ids": [f"doc-{i}"]}
            for i in range(20)]
    path = tmp_path / "train.jsonl"

    def write() -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write()
    before, before_dev = load_train_dev([path], 100, 4, seed=3)
    before_order, before_held = training_order(Index.open(topic_index, readonly=True), [path], 0.25, seed=3)
    blank = "q0"  # about the article that sorts first: leaving it out before the split would change every pick
    listed_first = next(r.id for r in before if r.id != blank)
    for row in rows:
        if row["id"] == blank:
            row["answers"] = ["", " "]
        if row["id"] == listed_first:
            row["answers"] = ["", row["answers"][0]]
    write()
    train, dev = load_train_dev([path], 100, 4, seed=3)
    assert "left out 1 training record whose answers are all blank (nothing to learn from)" in capsys.readouterr().err
    assert [r.id for r in train] == [r.id for r in before if r.id != blank] and [r.id for r in dev] == [r.id for r in before_dev]
    assert next(r for r in train if r.id == listed_first).answers == [rows[int(listed_first[1:])]["answers"][1]]
    order, held = training_order(Index.open(topic_index, readonly=True), [path], 0.25, seed=3)
    assert [r.id for r in held] == [r.id for r in before_held]
    assert [r.id for r in order] == [r.id for r in before_order if r.id != blank]
    rows = [{**r, "answers": [""]} for r in rows]
    write()
    with pytest.raises(ValueError, match="no training record has an answer that is not blank"):
        load_train_dev([path], 100, 4, seed=3)


def test_split_by_article_holds_out_whole_articles() -> None:
    """Every question about a held-out article is held out, none about the others; the split is seeded; questions
    whose gold article is unknown stay in training."""
    article_of = {f"{a}-{p}": f"Article {a}" for a in range(10) for p in range(3)}
    records = [QARecord(f"{a}-{p}-{i}", "q", ["x"], [f"{a}-{p}"]) for a in range(10) for p in range(3) for i in range(2)]
    records.append(QARecord("unknown", "q", ["x"], ["elsewhere"]))
    rest, held = split_by_article(records, article_of, 0.3, seed=1)
    held_articles = {article_of[r.gold_ids[0]] for r in held}
    assert len(held_articles) == 3 and len(held) == 3 * 3 * 2
    assert not held_articles & {article_of.get(r.gold_ids[0]) for r in rest}
    assert "unknown" in {r.id for r in rest} and len(rest) + len(held) == len(records)
    assert split_by_article(records, article_of, 0.3, seed=1) == (rest, held)
    assert split_by_article(records, article_of, 0.3, seed=2) != (rest, held)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_by_article(records, article_of, 1.0, seed=1)


@pytest.mark.parametrize("reader_fixture,lr", [("tiny_reader_path", 1e-2), ("tiny_fid_reader_path", 1e-1)])
def test_full_finetuning_learns_the_answer(topic_index: Path, reader_fixture: str, lr: float, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    """Twenty-five steps on one question make the tiny reader (decoder-only, or FiD over a T5) say its answer; the folder
    loads as a reader."""
    train_file = write_topic_qa(tmp_path / "one.jsonl.gz", n=1)
    config = ReaderTrainingConfig(train=[train_file], index=topic_index, out=tmp_path / "full", reader=request.getfixturevalue(reader_fixture),
                                  method="full", k=2, steps=25, batch_size=2, lr=lr, dev_size=0, dev_eval=0, device="cpu")
    record = train_reader(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert len(losses) == 25 and losses[-1] < losses[0] / 5
    assert rows[0]["lr"] == 0.0 and rows[-1]["lr"] > 0  # each step's own rate: warm-up from 0, decay towards 0 after the last
    assert record["examples_with_gold_passage"] == 1
    trained = Pipeline(Index.open(topic_index, readonly=True), load_generative_reader(str(tmp_path / "full"), device="cpu"))
    assert type(trained.reader).__name__ == ("FiDReader" if "fid" in reader_fixture else "DecoderReader")
    assert trained.ask("which topic is number 0?", k=2).text == "topic0"


def test_lora_learns_the_answer(topic_index: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """LoRA (the default method) on one question: the loss falls, and the saved adapter, loaded over the untouched
    base, makes the answer more likely than the base does. (The tiny reader's 64-d tied embeddings cap its logits,
    so LoRA, which leaves them alone, cannot make it say the answer as full finetuning does.)"""
    config = ReaderTrainingConfig(train=[write_topic_qa(tmp_path / "one.jsonl.gz", n=1)], index=topic_index, out=tmp_path / "lora",
                                  reader=tiny_reader_path, method="lora", k=2, steps=25, batch_size=2, lr=1e-1, dev_size=0,
                                  dev_eval=0, device="cpu")
    train_reader(config, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.5
    passages = Index.open(topic_index, readonly=True).search("which topic is number 0?", k=2)
    base, adapted = (DecoderReader(tiny_reader_path, adapter=adapter, device="cpu") for adapter in (None, tmp_path / "lora"))
    gain = adapted.score("which topic is number 0?", passages, "topic0") - base.score("which topic is number 0?", passages, "topic0")
    assert (gain > 0.5).all()


def test_lora_cli_writes_an_adapter_that_loads(topic_index: Path, tiny_reader_path: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lora"
    code = main_train(["reader", "--train", str(write_topic_qa(tmp_path / "qa.jsonl.gz")), "--index", str(topic_index), "--out", str(out),
                       "--reader", tiny_reader_path, "--steps", "3", "--batch-size", "2", "--dev-size", "4", "--dev-eval", "2",
                       "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dev"]["n"] == 2
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["method"] == "lora" and record["config"]["steps"] == 3 and record["train_seconds"] > 0
    adapted = DecoderReader(tiny_reader_path, adapter=out, device="cpu", max_new_tokens=4)
    assert isinstance(adapted.generate(["which topic is number 1?"], [[]])[0], str)


def test_an_interrupted_run_leaves_no_folder_behind(topic_index: Path, tiny_reader_path: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C (or SIGTERM) in the middle of training: exit status 130, --out removed, and the same command then runs.
    Once the reader is trained and saved, it stays."""
    import trainer.reader_training

    out = tmp_path / "lora"
    argv = ["reader", "--train", str(write_topic_qa(tmp_path / "qa.jsonl.gz")), "--index", str(topic_index), "--out", str(out),
            "--reader", tiny_reader_path, "--steps", "3", "--batch-size", "2", "--dev-size", "4", "--dev-eval", "0", "--device", "cpu"]
    calls = []

    def interrupted_on_the_second_step(*args: object) -> torch.Tensor:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer_nll(*args)

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer.reader_training, "answer_nll", interrupted_on_the_second_step)
        assert main_train(argv) == 130
    assert f"rag-train: the unfinished run's files are removed from {out}" in capsys.readouterr().err
    assert len(calls) == 2 and not out.exists()
    assert main_train(argv) == 0 and (out / "adapter_config.json").is_file()
    # Cut short in its dev evaluation, a run keeps the reader it trained.
    argv[argv.index(str(out))], argv[argv.index("--dev-eval") + 1] = str(tmp_path / "evaluated"), "2"
    with monkeypatch.context() as patch:
        patch.setattr(trainer.reader_training, "evaluate_qa", ctrl_c)
        assert main_train(argv) == 130
    assert f"the run's model is saved in {tmp_path / 'evaluated'}" in capsys.readouterr().err
    assert (tmp_path / "evaluated" / "adapter_config.json").is_file() and not (tmp_path / "evaluated" / "training.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--train", "missing.jsonl"], "training file not found"),
    (["--train", ","], "--train needs at least one QA file"),
    (["--train", "squad-open-dev.jsonl.gz"], "evaluation-only data (shared/data/SOURCES.md): train on squad-open-train or nq-open-train"),
    (["--dev-size", "20"], "--dev-size 20 holds out all 20 questions"),  # the file has 20: nothing left to train on
    (["--reader", "ADAPTER"], "this is a peft adapter folder: pass it as --adapter over its base reader"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--dev-size", "-50"], "--dev-size must be 0 or more"),
    (["--dev-eval", "-3"], "--dev-eval must be 0 or more"),
    (["--max-passage-tokens", "0"], "--max-passage-tokens must be at least 1"),
    (["--lora-rank", "0"], "--lora-rank must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--k", "101"], "--k 101: at most 100 passages"),
])
def test_bad_training_input(argv: list[str], message: str, topic_index: Path, tmp_path: Path, tiny_reader_path: str,
                            capsys: pytest.CaptureFixture) -> None:
    """Refused with a message and exit status 2, and --out is left as it was: the same command runs again once fixed."""
    qa = write_topic_qa(tmp_path / "qa.jsonl.gz")
    (tmp_path / "squad-open-dev.jsonl.gz").write_bytes(qa.read_bytes())  # named as the evaluation-only file
    (tmp_path / "ADAPTER").mkdir()
    (tmp_path / "ADAPTER" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    base = {"--train": str(qa), "--index": str(topic_index), "--out": str(tmp_path / "o"), "--reader": tiny_reader_path, "--steps": "1",
            "--dev-size": "4"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    for option in ("--train", "--reader"):
        if (tmp_path / base[option]).exists():
            base[option] = str(tmp_path / base[option])
    assert main_train(["reader", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_trains_on_an_index_without_bm25(tmp_path: Path, tiny_encoder, tiny_reader_path: str) -> None:
    """Retrieval for the examples and the dev answers is dense there, as questions are answered on such an index."""
    build_index(tmp_path / "idx", make_documents(20), tiny_encoder, sparse=False)
    files = [write_topic_qa(tmp_path / "a.jsonl.gz"), write_topic_qa(tmp_path / "b.jsonl.gz")]
    config = ReaderTrainingConfig(train=files, index=tmp_path / "idx", out=tmp_path / "o", reader=tiny_reader_path, k=2, steps=2,
                                  batch_size=2, grad_accum=2, dev_size=1, dev_eval=1, device="cpu")
    record = train_reader(config, progress=False)
    assert record["dev"]["n"] == 1 and record["examples"] == 8  # a dev question, though --dev-size is under one per file


def test_the_dev_answers_come_from_every_training_file(tmp_path: Path, topic_index: Path, tiny_reader_path: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--dev-eval answers a seeded sample of the questions held out of all the --train files, not the first file's alone."""
    import trainer.reader_training

    files = []
    for name in ("first", "second"):
        with gzip.open(tmp_path / f"{name}.jsonl.gz", "wt") as fh:
            for i in range(20):
                fh.write(json.dumps({"question": f"{name} file: which topic is number {i}?", "answers": [f"topic{i}"]}) + "\n")
        files.append(tmp_path / f"{name}.jsonl.gz")
    asked: list[str] = []
    evaluate = trainer.reader_training.evaluate_qa

    def recording(pipeline, records, **options):  # the real evaluation, with the questions it was given noted
        asked.extend(r.question for r in records)
        return evaluate(pipeline, records, **options)

    monkeypatch.setattr(trainer.reader_training, "evaluate_qa", recording)
    config = ReaderTrainingConfig(train=files, index=topic_index, out=tmp_path / "o", reader=tiny_reader_path, k=2, steps=1,
                                  batch_size=2, dev_size=20, dev_eval=10, device="cpu")
    assert train_reader(config, progress=False)["dev"]["n"] == 10
    assert len(asked) == 10 and {q.split(" file")[0] for q in asked} == {"first", "second"}


def test_the_evaluation_only_refusal_advises_by_the_kind_of_file() -> None:
    from trainer.scope_data import check_not_evaluation_only

    with pytest.raises(ValueError, match="train on counterfact-train") as edits:
        check_not_evaluation_only("counterfact-test.jsonl.gz")
    with pytest.raises(ValueError, match="train on squad-open-train or nq-open-train") as questions:
        check_not_evaluation_only("nq-open-test.jsonl.gz")
    assert "squad" not in str(edits.value) and "counterfact" not in str(questions.value)


def test_refuses_a_non_empty_out_folder(topic_index: Path, tmp_path: Path, tiny_reader_path: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main_train(["reader", "--train", str(write_topic_qa(tmp_path / "qa.jsonl.gz")), "--index", str(topic_index),
                       "--out", str(out), "--reader", tiny_reader_path]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main_train(["reader", "--train", str(write_topic_qa(tmp_path / "qa.jsonl.gz")), "--index", str(topic_index),
                       "--out", str(out / "keep.txt"), "--reader", tiny_reader_path]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
