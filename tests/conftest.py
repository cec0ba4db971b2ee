"""Shared fixtures: a tiny randomly initialised encoder (real tokenizer, real code path) and small corpora."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gzip
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from indexer.encoder import TextEncoder, resolve_model_path
from indexer.index import build_index
from indexer.records import Document


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models are fastest on one thread; on a shared CPU, two threads wait on each other (10x slower).
    Use per module: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-d BERT with MiniLM's tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_path: str) -> TextEncoder:
    return TextEncoder(tiny_encoder_path, device="cpu")


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def make_documents(n: int, words: int = 30, prefix: str = "doc") -> list[Document]:
    """n distinct documents; document i mentions the word `topic{i}` so searches can find it."""
    docs = []
    for i in range(n):
        body = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))
        docs.append(Document(f"{prefix}-{i}", f"Title {i}", f"topic{i} {body} topic{i}", {"source": "test"}))
    return docs


@pytest.fixture(scope="session")
def topic_index(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder) -> Path:
    """An index of make_documents(20) with the tiny encoder, for tests that only read it."""
    out = tmp_path_factory.mktemp("topics") / "idx"
    build_index(out, make_documents(20), tiny_encoder)
    return out


def write_topic_qa(path: Path, n: int = 20) -> Path:
    """A gzipped QA file asking for the topic word of make_documents' first n documents (gold: that document)."""
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": f"which topic is number {i}?", "answers": [f"topic{i}"],
                                 "gold_ids": [f"doc-{i}"]}) + "\n")
    return path


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    with open(path, "w") as fh:
        for d in docs:
            fh.write(json.dumps({"id": d.id, "title": d.title, "text": d.text, **d.meta}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_reader_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 64-d Llama with SmolLM2's tokenizer and chat template, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rag.models import _GGUF_FILE, _gguf_folder

    folder = tmp_path_factory.mktemp("tiny-reader")
    tokenizer = AutoTokenizer.from_pretrained(_gguf_folder(), gguf_file=_GGUF_FILE)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_fid_reader_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-d T5 with MiniLM's tokenizer ([SEP] ends an answer), saved as a model folder: no seq2seq weights
    can be had offline. No dropout, so a training-mode pass is deterministic."""
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-fid-reader")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class ServerProcess:
    """`rag-serve run` in a child process on a free loopback port, with `options` and `env` added to its own."""

    START_TIMEOUT = 120.0

    def __init__(self, index: Path, reader: str, *options: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-c", "from serve.cli import main; raise SystemExit(main())", "run",
                   "--index", str(index), "--reader", reader, "--device", "cpu", "--port", "0", "--log-level", "warning", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        self.lines: list[str] = []
        self._url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if " open http://" in line:
                self._url = line.split(" open ", 1)[1].split()[0]

    @property
    def url(self) -> str:
        """Its URL, once it serves (waits for it: a start takes seconds of imports)."""
        deadline = time.monotonic() + self.START_TIMEOUT
        while not self._url:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the server did not start: {self.lines[-10:]}")
            time.sleep(0.05)
        return self._url

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit status."""
        self.process.send_signal(sig)
        return self.process.wait(60)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stopped whatever happened in the block (a failed assertion too): SIGTERM, then SIGKILL after a minute."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def hold_answers(pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make `pipeline.ask_many` wait, once called, until the first event is set (as a long generation would); the
    second is set when a call has begun. The answers are then the real ones."""
    release, answering = threading.Event(), threading.Event()
    answer_many = pipeline.ask_many

    def slow(questions: Sequence[str], **options: Any) -> list[Any]:
        answering.set()
        release.wait(30)
        return answer_many(questions, **options)

    monkeypatch.setattr(pipeline, "ask_many", slow)
    return release, answering
