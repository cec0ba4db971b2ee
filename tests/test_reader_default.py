"""Integration: the real default reader converts from GGUF once, reloads from its safetensors cache, and answers."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from indexer.records import Passage
from rag.models import GENERATIVE_READER, resolve_reader_path
from rag.reader import DecoderReader


def test_default_reader_is_cached_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
    folder = Path(resolve_reader_path(GENERATIVE_READER))
    assert folder == tmp_path / "cache" / "readers" / GENERATIVE_READER
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [GENERATIVE_READER]  # no temp folder left behind

    start = time.perf_counter()
    reader = DecoderReader(device="cpu", max_new_tokens=12)
    assert time.perf_counter() - start < 30  # a cached load, not another GGUF conversion (~30 s or more)
    passage = Passage("p#0", "p", "France", "Paris is the capital and most populous city of France.")
    answer = reader.generate(["What is the capital of France?"], [[passage]])[0]
    assert "Paris" in answer and "\n" not in answer
    scores = reader.score("What is the capital of France?", [passage, Passage("q#0", "q", "Oslo", "Oslo is in Norway.")], "Paris")
    assert scores.shape == (2,) and bool((scores < 0).all())

    # A whole finetuned copy saves (a GGUF quantization_config left in the config made transformers refuse),
    # also from a cache converted by an earlier version, which still had one.
    reader.model.save_pretrained(tmp_path / "full")
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "quantization_config": {"quant_method": "gguf"}}))
    assert "quantization_config" not in json.loads(Path(resolve_reader_path(GENERATIVE_READER), "config.json").read_text())
    DecoderReader(device="cpu").model.save_pretrained(tmp_path / "full-again")
