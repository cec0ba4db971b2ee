"""The Fusion-in-Decoder reader on a tiny random T5: fused reading, per-passage scores, cross-attention mass, answers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from indexer.records import Passage
from rag.fid_reader import FiDReader, is_fid_reader
from rag.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def passage(text: str, title: str = "T") -> Passage:
    return Passage(id=f"{title}#0", doc_id=title, title=title, text=text)


PASSAGES = [passage("alpha bravo charlie", "A"), passage("delta echo foxtrot golf hotel", "B"), passage("india", "C")]


@pytest.fixture(scope="module")
def reader(tiny_fid_reader_path: str) -> FiDReader:
    return FiDReader(tiny_fid_reader_path, device="cpu")


def test_one_passage_reads_as_the_plain_seq2seq_model(reader: FiDReader) -> None:
    """K=1: FiD is the encoder-decoder model itself on "question: .. title: .. context: ..": the same log-likelihood."""
    text = reader.encoder_texts("who?", PASSAGES[:1])[0]
    assert text == "question: who? title: A context: alpha bravo charlie"
    inputs = reader.tokenizer([text], return_tensors="pt")
    target = torch.tensor([reader.answer_ids("bravo")])
    with torch.no_grad():
        direct = -reader.model(**inputs, labels=target).loss * target.shape[1]
        fused, length = reader.read_logprobs(["who?"], [PASSAGES[:1]], ["bravo"])
    assert length.tolist() == [target.shape[1]] and target[0, -1] == reader.eos_id
    assert fused.item() == pytest.approx(direct.item(), abs=1e-4)


def test_fused_reading_ignores_passage_order_and_batch_padding(reader: FiDReader) -> None:
    """The decoder sees a set of passages: any order gives the same answer likelihood, and a question read beside one
    with more passages (its spare slots masked) reads as alone."""
    with torch.no_grad():
        alone = reader.read_logprobs(["who?"], [PASSAGES[:2]], ["delta"])[0]
        swapped = reader.read_logprobs(["who?"], [PASSAGES[1::-1]], ["delta"])[0]
        batched, lengths = reader.read_logprobs(["who?", "what?"], [PASSAGES[:2], PASSAGES], ["delta", "a longer answer here"])
    assert swapped.item() == pytest.approx(alone.item(), abs=1e-4)
    assert batched[0].item() == pytest.approx(alone.item(), abs=1e-4) and lengths[1] > lengths[0]


def test_score_reads_each_passage_alone(reader: FiDReader) -> None:
    with torch.no_grad():
        scores = reader.score("who?", PASSAGES, "india")
        alone = [reader.read_logprobs(["who?"], [[p]], ["india"])[0].item() for p in PASSAGES]
    assert scores.shape == (3,) and scores.tolist() == pytest.approx(alone, abs=1e-4)
    assert reader.score("who?", PASSAGES, "india").requires_grad  # the reader trains on it (rag loss)
    with pytest.raises(ValueError, match="at least one passage"):
        reader.score("who?", [], "india")


def test_cross_attention_mass_is_a_distribution_over_the_passages(reader: FiDReader) -> None:
    """Each row sums to 1 over its passages, spare slots get none, equal passages get equal mass, one passage gets all,
    and the log-likelihood is the one read_logprobs gives."""
    with torch.no_grad():
        logprobs, _, mass = reader.read_with_attention(["who?", "what?", "why?"], [PASSAGES, [PASSAGES[0], PASSAGES[0], PASSAGES[2]], PASSAGES[:1]],
                                                       ["alpha", "india", "bravo"])
        plain = reader.read_logprobs(["who?"], [PASSAGES], ["alpha"])[0]
        _, _, alone = reader.read_with_attention(["what?"], [[PASSAGES[0], PASSAGES[0], PASSAGES[2]]], ["india"])
    assert mass.shape == (3, 3) and torch.allclose(mass.sum(-1), torch.ones(3), atol=1e-5) and (mass >= 0).all()
    assert mass[2].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert mass[1, 0].item() == pytest.approx(mass[1, 1].item(), abs=1e-6)
    assert torch.allclose(mass[1], alone[0], atol=1e-5)
    assert logprobs[0].item() == pytest.approx(plain.item(), abs=1e-4)


def test_generation_is_batched_and_reads_closed_book(reader: FiDReader) -> None:
    questions, contexts = ["who?", "what?", "closed book?"], [PASSAGES, PASSAGES[:1], []]
    together = reader.generate(questions, contexts)
    assert together == [reader.generate([q], [c])[0] for q, c in zip(questions, contexts)]
    assert all(isinstance(a, str) and "\n" not in a for a in together)
    assert reader.generate([], []) == []
    with pytest.raises(ValueError, match="2 questions but 1 passage lists"):
        reader.generate(["a", "b"], [[]])


def test_a_folder_is_a_fid_reader_only_when_its_model_is_encoder_decoder(tiny_fid_reader_path: str, tiny_reader_path: str,
                                                                        tmp_path: Path) -> None:
    assert is_fid_reader(tiny_fid_reader_path) and not is_fid_reader(tiny_reader_path)
    assert not is_fid_reader("SmolLM2-135M-Instruct") and not is_fid_reader(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    assert not is_fid_reader(tmp_path)
    with pytest.raises(RuntimeError, match="cannot load FiD reader"):
        FiDReader(str(tmp_path), device="cpu")


def test_the_pipeline_answers_with_a_fid_reader(topic_index: Path, tiny_fid_reader_path: str) -> None:
    pipeline = Pipeline.load(topic_index, reader=tiny_fid_reader_path, device="cpu", scope="none")
    assert isinstance(pipeline.reader, FiDReader)
    answer = pipeline.ask("which topic is number 3?", k=3, mode="dense")
    assert isinstance(answer.text, str) and len(answer.passages) == 3
    with pytest.raises(ValueError, match="--constrain"):
        Pipeline.load(topic_index, reader=tiny_fid_reader_path, device="cpu", constrain_to_passages=True)
    with pytest.raises(ValueError, match="Fusion-in-Decoder reader"):
        pipeline.ask("which topic is number 3?", k=3, mode="dense", adapter=topic_index)
