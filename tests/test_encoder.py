"""The encoder: vectors in input order, normalised, equal to sentence-transformers' on the real model."""
from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.encoder import TextEncoder, encoder_input, resolve_device, resolve_model_path
from indexer.index import Index, build_index
from indexer.records import Document
from rag.retriever import DualEncoder
from rag.scope_classifier import ScopeClassifier
from rag.span_reader import SpanReader

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "data/corpus/wiki-default.jsonl.gz"


def test_vectors_follow_input_order_whatever_the_batching(tiny_encoder: TextEncoder) -> None:
    texts = [" ".join(["word"] * n) + f" tail{n}" for n in (50, 3, 120, 7, 1, 64)]
    together = tiny_encoder(texts)
    alone = np.stack([tiny_encoder([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    tiny_encoder.batch_tokens, saved = 64, tiny_encoder.batch_tokens  # force many small batches
    try:
        np.testing.assert_allclose(tiny_encoder(texts), together, atol=1e-5)
    finally:
        tiny_encoder.batch_tokens = saved


def test_dual_encoder_vectors_follow_input_order_whatever_the_batching(tiny_encoder: TextEncoder) -> None:
    texts = [" ".join(["word"] * n) + f" tail{n}" for n in (50, 3, 120, 7, 1, 64)]
    encoder = DualEncoder(tiny_encoder.name).eval()
    alone = np.concatenate([encoder.encode([t], "passage") for t in texts])
    for batch_size in (2, 4, 64):
        np.testing.assert_allclose(encoder.encode(texts, "passage", batch_size), alone, atol=1e-5)
    np.testing.assert_allclose(alone, tiny_encoder(texts), atol=1e-5)  # the indexer's vectors, so refreshes match them
    assert encoder.encode([], "query").shape == (0, encoder.dim)


def test_vectors_are_normalised_and_empty_input_gives_no_rows(tiny_encoder: TextEncoder) -> None:
    vectors = tiny_encoder(["one text", "another, longer text " * 20])
    assert vectors.dtype == np.float32 and vectors.shape == (2, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder([]).shape == (0, tiny_encoder.dim)


def test_unknown_encoder_is_a_clear_error(tmp_path: Path) -> None:
    # Named as what is wrong, not as a malformed hub id or a tokenizer transformers cannot build.
    with pytest.raises(RuntimeError, match=f"cannot load encoder .*: no such model folder {tmp_path / 'no-such-model'}$"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(RuntimeError, match=f"{tmp_path} is not a model folder \\(it has no config.json\\)"):
        TextEncoder(str(tmp_path))
    with pytest.raises(RuntimeError, match="no such model folder"):
        DualEncoder(str(tmp_path / "no-such-model"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RuntimeError, match="model.safetensors is a file, not a model folder"):
        TextEncoder(str(tmp_path / "model.safetensors"))
    for load in (SpanReader.from_encoder, ScopeClassifier.from_encoder):  # the two heads trained over an encoder
        with pytest.raises(RuntimeError, match="no such model folder"):
            load(str(tmp_path / "no-such-model"))


def test_unknown_dtype_is_a_clear_error(tiny_encoder_path: str) -> None:
    with pytest.raises(ValueError, match="unknown encoder dtype 'float8'.*float32, bfloat16"):
        TextEncoder(tiny_encoder_path, dtype="float8")


def test_cpu_means_cpu_even_when_cuda_is_present(tiny_encoder: TextEncoder, tiny_encoder_path: str,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert TextEncoder(tiny_encoder_path, device="cpu").device == torch.device("cpu")
    # An index opened on the CPU loads its query encoder there too.
    build_index(tmp_path / "idx", [Document("d", "T", "some text")], tiny_encoder)
    with Index.open(tmp_path / "idx", device="cpu") as index:
        assert index.encoder.device == torch.device("cpu")
        assert index.search("some text", k=1, mode="dense")[0].id == "d#0"


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder()


def test_default_encoder_matches_sentence_transformers(minilm: TextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    with gzip.open(DEFAULT_CORPUS, "rt") as fh:
        records = [json.loads(line) for line in islice(fh, 40)]
    texts = [encoder_input(r["title"], r["text"]) for r in records]
    reference = sentence_transformers.SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    np.testing.assert_allclose(minilm(texts), reference.encode(texts), atol=1e-5)
    assert minilm.dim == 384 and minilm.normalize


def test_default_encoder_retrieves_the_passage_a_question_is_about(minilm: TextEncoder, tmp_path: Path) -> None:
    docs = [
        Document("eiffel", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
        Document("nile", "Nile", "The Nile is a major north-flowing river in northeastern Africa."),
        Document("insulin", "Insulin", "Insulin is a peptide hormone produced by beta cells of the pancreatic islets."),
    ]
    build_index(tmp_path / "idx", docs, minilm)
    with Index.open(tmp_path / "idx", minilm) as index:
        for mode in ("dense", "hybrid"):
            assert index.search("Which hormone do pancreatic beta cells make?", k=1, mode=mode)[0].doc_id == "insulin"
            assert index.search("how tall is the tower in paris", k=1, mode=mode)[0].doc_id == "eiffel"


def test_bfloat16_encoding_stays_close_to_float32_and_ranks_alike(minilm: TextEncoder) -> None:
    # The GPU build path (`rag-index build --encoder-dtype bfloat16`) runs on the CPU as well.
    with gzip.open(DEFAULT_CORPUS, "rt") as fh:
        records = [json.loads(line) for line in islice(fh, 60)]
    texts = [encoder_input(r["title"], r["text"]) for r in records]
    bf16 = TextEncoder(dtype="bfloat16", device="cpu")
    exact, approx = minilm(texts), bf16(texts)
    assert approx.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(approx, axis=1), 1.0, atol=1e-5)
    assert (exact * approx).sum(1).min() > 0.99  # cosine of each pair
    # Each passage's own title, as a query, finds the same passage first under both.
    queries = minilm([r["title"] for r in records])
    assert ((queries @ exact.T).argmax(1) == (queries @ approx.T).argmax(1)).mean() >= 0.95
