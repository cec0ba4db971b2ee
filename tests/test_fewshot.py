"""Few-shot tasks on tiny models: task files, rank classification, training each method, and `rag-eval fewshot`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.rank_classification import rank_classify
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from trainer.cli import main as rag_eval
from trainer.cli import main_train
from trainer.fewshot_prompts import fitting_prompt_ids, prompt_ids, retrieve
from trainer.fewshot_tasks import BUILTIN_TASKS, FEWSHOT_ROOT, Example, load_task
from trainer.fewshot_training import FewShotConfig, train_fewshot

pytestmark = pytest.mark.usefixtures("one_thread")


def write_task(folder: Path, spec: dict, train: list[dict], val: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps(spec))
    for name, records in (("train", train), ("val", val)):
        if records is not None:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Classification: the label is 'bravo' exactly when the text mentions the number 7."""
    records = [{"text": f"item {i} {'seven' if i % 2 else 'two'}", "label": i % 2} for i in range(12)]
    spec = {"name": "toy", "template": "Text: {text}\nAlpha or bravo?", "target": "label", "label_words": {"0": "alpha", "1": "bravo"}}
    return write_task(tmp_path_factory.mktemp("task") / "toy", spec, records[:8], records[8:])


@pytest.fixture(scope="module")
def reader(tiny_reader_path: str) -> DecoderReader:
    return DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4)


class StubReader:
    """A reader whose log-likelihoods are given: one token per character of a choice, plus the end token."""

    def __init__(self, sums: dict[str, float]) -> None:
        self.sums = sums

    def answer_ids(self, answer: str) -> list[int]:
        return [ord(c) for c in answer] + [0]

    def answer_logprobs(self, prompts: list, answers: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = ["".join(chr(t) for t in a[:-1]) for a in answers]
        return torch.tensor([self.sums[t] for t in texts]), torch.tensor([float(len(a)) for a in answers])


def test_rank_classification_picks_the_highest_length_normalised_likelihood() -> None:
    """'no' has the higher total log-likelihood, 'certainly' the higher per token: rank classification
    (T-Few's length normalisation) picks 'certainly'; the tokens read count every choice's row."""
    stub = StubReader({"no": -3.0, "certainly": -5.0, "yes": -9.0})
    first, second = rank_classify(stub, [[1, 2, 3], [4]], [["no", "certainly", "yes"], ["yes", "no"]])  # type: ignore[arg-type]
    assert first.best == 1 and second.best == 1  # "no" (-1.0 per token) over "yes" (-2.25)
    assert first.scores == pytest.approx([-1.0, -0.5, -2.25])
    assert first.tokens == 3 * 3 + (3 + 10 + 4)


def test_shared_prompt_scores_equal_one_row_per_choice(reader: DecoderReader) -> None:
    """Reading each prompt once for all its choices (a shared key/value cache) gives what one full row per
    choice gives; batches cut by the token budget give what one prompt at a time gives."""
    prompts = [reader.chat_ids("Answer.", f"question {i} " * (1 + i)) for i in range(5)]
    choices = [["yes", "no"], ["a b c", "d"], ["maybe", "no"], ["x", "y z"], ["one", "two"]]
    batched = rank_classify(reader, prompts, choices, max_tokens=64)  # several forward passes
    for prompt, options, ranking in zip(prompts, choices, batched):
        with torch.inference_mode():
            sums, lengths = reader.answer_logprobs([prompt] * len(options), [reader.answer_ids(o) for o in options])
        assert ranking.scores == pytest.approx((sums / lengths).tolist(), abs=1e-4) and ranking.best == int((sums / lengths).argmax())
        assert ranking.tokens == len(prompt) + sum(len(reader.answer_ids(o)) for o in options)


def test_builtin_tasks_render_their_records() -> None:
    assert set(BUILTIN_TASKS) == {"superglue-boolq", "superglue-rte", "superglue-cb", "superglue-copa", "superglue-wic", "sst2", "trec", "nq-open"}
    if not FEWSHOT_ROOT.is_dir():
        pytest.skip("the shared few-shot data is not here")
    copa = load_task("superglue-copa").load("val")[0]
    assert copa.choices == ["The toilet filled with water.", "Water flowed from the spout."] and copa.label == 1
    cb = load_task("superglue-cb")
    assert {e.target for e in cb.load("val")} == {"yes", "no", "maybe"} and len(cb.shots(16, seed=0)) == 16
    assert cb.shots(16, seed=0) == cb.shots(16, seed=0) != cb.shots(16, seed=1)
    assert all(e.answers for e in load_task("nq-open").load("val")[:50])


def test_user_task_folder_formats(tmp_path: Path) -> None:
    choice = write_task(tmp_path / "mc", {"template": "{q}", "target": "right", "choices": ["{a}", "{b}"]},
                        [{"q": "pick", "a": "first", "b": "second", "right": 1}])
    [example] = load_task(choice).load("train")
    assert (example.choices, example.label, example.target) == (["first", "second"], 1, "second")
    qa = write_task(tmp_path / "qa", {"template": "Q: {question}", "target": "answers"},
                    [{"question": "who?", "answers": ["Homer", "homer"]}, {"question": "skip", "answers": [""]}])
    task = load_task(qa)
    assert task.is_qa and [e.answers for e in task.load("train")] == [["Homer", "homer"]]


@pytest.mark.parametrize("spec, lines, message", [
    ({"template": "{text}", "target": "label", "label_words": {"0": "no", "1": "yes"}}, ['{"text": "a", "label": 0}', '{"text": "b", "label": 5}'],
     "train.jsonl:2: label 5 is not one of ['0', '1']"),
    ({"template": "{text}", "target": "label", "label_words": {"0": "no", "1": "yes"}}, ['{"text": "a", "label": 0}', '{"label": 1}'],
     "train.jsonl:2: missing field 'text'"),
    ({"template": "{text}", "target": "label", "label_words": {"0": "no", "1": "yes"}}, ['{"text": "a", "label": 0', ""], "train.jsonl:1: not JSON"),
    ({"template": "{text}", "target": "label", "label_words": {"0": "no"}}, ['{"text": "a", "label": 0}'], "at least two labels"),
    ({"template": "{text}", "taget": "label"}, ['{"text": "a"}'], "needs \"template\""),
    ({"template": "{question}", "target": "answers", "retrieval": "no"}, ['{"question": "a", "answers": ["b"]}'],
     "retrieval must be true or false, got 'no'"),
    ({"template": "{a}", "target": "label", "choices": "{a}"}, ['{"a": "x", "label": 0}'], "choices must be a list of at least two"),
    # Two labels, one word: every record would be scored right, whatever the model says.
    ({"template": "{text}", "target": "label", "label_words": {"0": "yes", "1": "yes "}}, ['{"text": "a", "label": 1}'],
     "label_words must map each label to a different word"),
    ({"template": "{a}", "target": "label", "choices": ["{a}", "{a}"]}, ['{"a": "x", "label": 1}'], "choices must be different templates"),
])
def test_a_bad_task_file_stops_with_file_line_and_exit_2(spec: dict, lines: list[str], message: str, tmp_path: Path,
                                                         tiny_reader_path: str, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps(spec))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    code = main_train(["fewshot", "--task", str(folder), "--shots", "1", "--out", str(tmp_path / "out"), "--reader", tiny_reader_path])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_in_context_shots_are_cut_to_the_prompt_budget(reader: DecoderReader, toy_task: Path) -> None:
    task = load_task(toy_task)
    shots, [example] = task.load("train"), task.load("val")[:1]
    full = prompt_ids(reader, task, example, shots=shots)
    ids, used = fitting_prompt_ids(reader, task, example, [], shots, max_tokens=len(full) - 1)
    assert used == len(shots) - 1 and ids == prompt_ids(reader, task, example, shots=shots[:used])
    assert fitting_prompt_ids(reader, task, example, [], shots, max_tokens=5) == (prompt_ids(reader, task, example), 0)


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_a_trained_adapter_changes_scores_learns_and_reloads_identically(method: str, toy_task: Path, tiny_reader_path: str,
                                                                        reader: DecoderReader, tmp_path: Path) -> None:
    out = tmp_path / method
    lr = {"lora": 2e-2, "ia3": 3e-1, "prompt": 3e-1}[method]
    record = train_fewshot(FewShotConfig(task=str(toy_task), out=out, shots=8, method=method, reader=tiny_reader_path,
                                         steps=12, batch_size=4, lr=lr, warmup=0.0))
    assert record["final_loss"] < record["first_loss"]
    saved = json.loads((out / "fewshot.json").read_text())
    assert (saved["task"], saved["method"], saved["shots"]) == ("toy", method, 8)
    assert (out / "adapter_config.json").is_file() and saved["saved_bytes"] < 200_000  # small: the base model is not in it

    task = load_task(toy_task)
    examples = task.load("val")
    prompts = [prompt_ids(reader, task, e) for e in examples]
    choices = [e.choices for e in examples]
    def scores(model: DecoderReader) -> list[float]:
        return [s for ranking in rank_classify(model, prompts, choices) for s in ranking.scores]

    base = scores(reader)
    adapted = scores(DecoderReader(tiny_reader_path, adapter=out, device="cpu"))
    assert adapted != pytest.approx(base, abs=1e-3)
    with reader.adapted(out):  # the same adapter served over the shared base, unmerged
        assert scores(reader) == pytest.approx(adapted, abs=1e-4)
    assert scores(reader) == pytest.approx(base, abs=1e-6)


def test_full_finetuning_learns_the_toy_task(toy_task: Path, tiny_reader_path: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Full finetuning saves a model; rag-eval fewshot loads it as the reader and reports accuracy and cost."""
    out = tmp_path / "full"
    assert main_train(["fewshot", "--task", str(toy_task), "--shots", "8", "--method", "full", "--steps", "30", "--lr", "1e-2",
                       "--out", str(out), "--reader", tiny_reader_path]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "full"
    assert rag_eval(["fewshot", "--task", str(toy_task), "--split", "train", "--adapter", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 8 and summary["accuracy"] == 1.0 and summary["method"] == "full"
    assert summary["ms_per_example"] > 0 and summary["tokens_per_example"] > 0


def test_eval_zero_shot_and_in_context(toy_task: Path, tiny_reader_path: str, capsys: pytest.CaptureFixture) -> None:
    assert rag_eval(["fewshot", "--task", str(toy_task), "--reader", tiny_reader_path]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert set(zero) >= {"n", "accuracy", "ms_per_example", "tokens_per_example"} and zero["method"] == "zero-shot" and zero["n"] == 4
    assert rag_eval(["fewshot", "--task", str(toy_task), "--reader", tiny_reader_path, "--icl", "4", "--limit", "2"]) == 0
    icl = json.loads(capsys.readouterr().out)
    assert icl["n"] == 2 and icl["shots_in_prompt"] == 4 and icl["tokens_per_example"] > zero["tokens_per_example"]
    assert rag_eval(["fewshot", "--task", str(toy_task), "--adapter", "nowhere"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert rag_eval(["fewshot", "--task", str(toy_task), "--reader", tiny_reader_path, "--icl", "100000"]) == 2
    assert "--icl 100000: task toy has only 8 training examples" in capsys.readouterr().err


def test_eval_refuses_an_adapter_config_without_a_peft_type(toy_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "adapter_config.json").write_text("{}")
    assert rag_eval(["fewshot", "--task", str(toy_task), "--adapter", str(tmp_path / "untyped")]) == 2
    assert "adapter_config.json names no peft_type" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--warmup", "5"], "--warmup is a share of the steps, from 0 to below 1; got 5.0"),
    (["--query-lr", "-1"], "--query-lr must be positive"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--index", "FILE"], "is read only with retrieval, which toy goes without here"),  # else ignored without a word
])
def test_training_refuses_settings_that_cannot_work(argv: list[str], message: str, toy_task: Path, tiny_reader_path: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "FILE").write_text("mine")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    assert main_train(["fewshot", "--task", str(toy_task), "--shots", "4", "--out", str(tmp_path / "out"), "--reader", tiny_reader_path,
                       *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and (tmp_path / "FILE").read_text() == "mine"


def test_infinite_numbers_are_refused_before_anything_runs(toy_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main_train(["fewshot", "--task", str(toy_task), "--out", str(tmp_path / "out"), "--lr", "inf"])
    assert stop.value.code == 2 and "argument --lr: expected a finite number, got 'inf'" in capsys.readouterr().err


def test_a_run_that_diverges_stops_with_exit_2_and_saves_nothing(toy_task: Path, tiny_reader_path: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A learning rate far too high: the run stops at the first loss that is not finite, not with NaN weights saved."""
    out = tmp_path / "out"
    assert main_train(["fewshot", "--task", str(toy_task), "--shots", "4", "--steps", "4", "--batch-size", "2", "--lr", "1e30",
                       "--out", str(out), "--reader", tiny_reader_path]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 3: the loss is nan" in err and "try a lower --lr" in err and not out.exists()  # step 1 warms up


def test_an_out_that_cannot_be_made_is_refused_before_training(toy_task: Path, tiny_reader_path: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Refused at once, not after the whole training: the reader is never even loaded. So is a second run into the
    same new folder, which the first has made and locked by then."""
    import trainer.fewshot_training

    def no_reader(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reader was loaded")

    monkeypatch.setattr(trainer.fewshot_training, "DecoderReader", no_reader)
    (tmp_path / "file").write_text("mine")
    assert main_train(["fewshot", "--task", str(toy_task), "--shots", "4", "--out", str(tmp_path / "file" / "run"),
                       "--reader", tiny_reader_path]) == 2
    assert "Not a directory" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"


def test_qa_with_retrieval_trains_and_reports_em_f1(tmp_path: Path, tiny_encoder: TextEncoder, tiny_reader_path: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    index = tmp_path / "idx"
    build_index(index, make_documents(10), tiny_encoder)
    records = [{"question": f"what is topic{i}?", "answers": [f"topic{i}"]} for i in range(6)]
    task = write_task(tmp_path / "qa", {"template": "{question}", "target": "answers", "retrieval": True}, records, records[:3])
    out = tmp_path / "qa-lora"
    assert main_train(["fewshot", "--task", str(task), "--shots", "4", "--method", "lora", "--steps", "3", "--index", str(index),
                       "--k", "2", "--train-query-encoder", "--query-lr", "1e-2", "--out", str(out), "--reader", tiny_reader_path]) == 0
    capsys.readouterr()
    record = json.loads((out / "fewshot.json").read_text())
    assert record["retrieval"] is True and record["query_encoder"] == "query_encoder"
    trained, original = DualEncoder(str(out / "query_encoder")), DualEncoder(tiny_encoder.name)
    assert not torch.equal(trained.query_model.embeddings.word_embeddings.weight, original.query_model.embeddings.word_embeddings.weight)
    assert rag_eval(["fewshot", "--task", str(task), "--adapter", str(out)]) == 0  # the index and query encoder from fewshot.json
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"n", "em", "f1"} and summary["n"] == 3 and summary["retrieval"] is True
    assert main_train(["fewshot", "--task", str(task), "--no-retrieval", "--train-query-encoder", "--out", str(tmp_path / "x"),
                       "--reader", tiny_reader_path]) == 2
    assert "needs a QA task with --retrieval" in capsys.readouterr().err


def test_retrieval_reads_an_index_built_without_bm25(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """The index's own default search (dense there), as `rag-serve ask` has it: few-shot has no --mode to change it."""
    build_index(tmp_path / "idx", make_documents(6), tiny_encoder, sparse=False)
    index = Index.open(tmp_path / "idx", tiny_encoder, readonly=True)
    [passages] = retrieve(index, [Example("which topic is number 2?", None, None, ["topic2"])], k=2)
    assert len(passages) == 2
