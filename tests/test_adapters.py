"""Several peft adapters over one base model (tiny models): each gives what it gives alone, the base stays
plain, bad folders get clear errors, and `/ask` takes an `adapter` per request."""
from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from serve.app import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTIONS = ["what is topic1?", "what is topic2?", "who wrote it?"]


def save_adapter(base_path: str, kind: str, seed: int, out: Path) -> Path:
    """A peft adapter with random (non-identity) weights over the model in `base_path`, saved to `out`."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(seed)
    config = {"lora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
              "ia3": IA3Config(init_ia3_weights=False, task_type="CAUSAL_LM"),
              "prompt": PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")}[kind]
    get_peft_model(LlamaForCausalLM.from_pretrained(base_path), config).save_pretrained(out)
    return out


def save_query_encoder(encoder_path: str, hidden_size: int, seed: int, out: Path) -> None:
    """A random BERT query encoder with the tiny encoder's tokenizer, as `rag-train fewshot --train-query-encoder` saves one."""
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(out)
    AutoTokenizer.from_pretrained(encoder_path).save_pretrained(out)


@pytest.fixture(scope="module")
def adapters(tiny_reader_path: str, tiny_encoder_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    made = {name: save_adapter(tiny_reader_path, kind, seed, folder / name)
            for name, kind, seed in (("lora-a", "lora", 1), ("lora-b", "lora", 2), ("ia3", "ia3", 3), ("prompt", "prompt", 4),
                                     ("lora-q", "lora", 5), ("lora-q16", "lora", 6))}
    save_query_encoder(tiny_encoder_path, 32, 7, made["lora-q"] / "query_encoder")
    save_query_encoder(tiny_encoder_path, 16, 8, made["lora-q16"] / "query_encoder")  # not the index's 32 dimensions
    return made


def scores(reader: DecoderReader) -> list[float]:
    """log p(answer | question) closed book for a few fixed pairs: a fingerprint of the model's outputs."""
    prompts = [reader.prompt_ids(q, []) for q in QUESTIONS]
    with torch.inference_mode():
        return reader.answer_logprobs(prompts, [reader.answer_ids("topic one")] * len(prompts))[0].tolist()


def test_adapters_over_one_base_each_answer_as_when_loaded_alone(tiny_reader_path: str, adapters: dict[str, Path]) -> None:
    shared = DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4)
    base = scores(shared)
    weights_before = sum(p.numel() for p in shared.model.parameters())
    seen = []
    for name, folder in adapters.items():
        alone = DecoderReader(tiny_reader_path, adapter=folder, device="cpu", max_new_tokens=4)
        with shared.adapted(folder):
            served = scores(shared)
            answers = shared.generate(QUESTIONS, [[] for _ in QUESTIONS])
        assert served == pytest.approx(scores(alone), abs=1e-4), name
        assert answers == alone.generate(QUESTIONS, [[] for _ in QUESTIONS]), name
        assert served != pytest.approx(base, abs=1e-3), f"{name} changed nothing"
        seen.append(served)
    assert seen[0] != pytest.approx(seen[1], abs=1e-3)  # the two LoRA adapters differ
    with shared.adapted(adapters["lora-a"]):  # back to the first after the others: still its own result
        assert scores(shared) == pytest.approx(seen[0], abs=1e-5)
    assert scores(shared) == pytest.approx(base, abs=1e-6)  # the base stays plain
    assert len(shared.adapters) == len(adapters) and sum(p.numel() for p in shared.model.parameters()) == weights_before


def test_bad_adapter_folders_get_clear_errors(tiny_reader_path: str, adapters: dict[str, Path], tmp_path: Path) -> None:
    reader = DecoderReader(tiny_reader_path, device="cpu")
    with pytest.raises(ValueError, match="no such folder"):
        with reader.adapted(tmp_path / "missing"):
            pass
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a peft adapter folder"):
        with reader.adapted(tmp_path / "empty"):
            pass
    other = tmp_path / "other-base"
    tokenizer = AutoTokenizer.from_pretrained(tiny_reader_path)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    with pytest.raises(ValueError, match="does not fit this reader"):
        with reader.adapted(save_adapter(str(other), "lora", 0, tmp_path / "misfit")):
            pass
    with reader.adapted(adapters["lora-a"]):  # a failed load leaves the bank working
        assert len(reader.adapters) == 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str,
           adapters: dict[str, Path]) -> Iterator[tuple[TestClient, Pipeline]]:
    path = tmp_path_factory.mktemp("serve-adapters") / "idx"
    build_index(path, make_documents(6), tiny_encoder)
    pipeline = Pipeline(Index.open(path, tiny_encoder), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4))
    root = next(iter(adapters.values())).parent  # /ask names adapters inside this folder only
    with TestClient(create_app(pipeline, ServeSettings(max_batch=8, max_wait_ms=300, adapter_root=root))) as client:
        yield client, pipeline


def test_ask_answers_with_the_adapter_each_request_names(served: tuple[TestClient, Pipeline], adapters: dict[str, Path]) -> None:
    client, pipeline = served
    requests = [(q, name) for q in QUESTIONS for name in (None, "lora-a", "lora-b", "prompt")]
    replies: dict[tuple[str, str | None], dict] = {}

    def ask(question: str, name: str | None) -> None:
        body = {"question": question, "k": 2} | ({"adapter": name} if name else {})
        replies[(question, name)] = client.post("/ask", json=body).json()

    threads = [threading.Thread(target=ask, args=request) for request in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for question, name in requests:
        expected = pipeline.ask(question, k=2, adapter=adapters[name] if name else None).text
        assert replies[(question, name)]["answer"] == expected, (question, name)
    assert max(r["batch_size"] for r in replies.values()) > 1  # concurrent questions still share batches


def test_an_adapter_with_its_own_query_encoder_retrieves_with_it(served: tuple[TestClient, Pipeline], adapters: dict[str, Path]) -> None:
    client, pipeline = served
    own = DualEncoder(str(adapters["lora-q"] / "query_encoder")).encode_queries(QUESTIONS)
    expected = [[h.id for h in hits] for hits in pipeline.index.search_many(QUESTIONS, k=3, mode="dense", query_vectors=own)]
    ported = pipeline.ask_many(QUESTIONS, k=3, mode="dense", adapter=adapters["lora-q"])
    assert [[h.id for h in a.passages] for a in ported] == expected
    assert [[h.id for h in a.passages] for a in pipeline.ask_many(QUESTIONS, k=3, mode="dense", adapter=adapters["lora-a"])] != expected
    reply = client.post("/ask", json={"question": QUESTIONS[0], "k": 3, "mode": "dense", "adapter": "lora-q"}).json()
    assert [p["id"] for p in reply["passages"]] == expected[0]
    # Hybrid: the dense half of the fusion searches with the adapter's vectors too.
    fused = [[h.id for h in hits] for hits in pipeline.index.search_many(QUESTIONS, k=3, mode="hybrid", query_vectors=own)]
    assert [[h.id for h in a.passages] for a in pipeline.ask_many(QUESTIONS, k=3, mode="hybrid", adapter=adapters["lora-q"])] == fused
    assert [[h.id for h in a.passages] for a in pipeline.ask_many(QUESTIONS, k=3, mode="hybrid")] != fused  # the test can tell
    reply = client.post("/ask", json={"question": QUESTIONS[0], "k": 3, "mode": "hybrid", "adapter": "lora-q"}).json()
    assert [p["id"] for p in reply["passages"]] == fused[0]
    response = client.post("/ask", json={"question": QUESTIONS[0], "adapter": "lora-q16"})
    assert response.status_code == 422 and "16-d" in response.json()["error"]
    broken = adapters["lora-a"].parent / "lora-qbroken"
    shutil.copytree(adapters["lora-a"], broken)
    (broken / "query_encoder").mkdir()
    (broken / "query_encoder" / "config.json").write_text("{}")  # no weights, no model type
    for _ in range(2):  # the failure is remembered, not reloaded, and the server carries on
        response = client.post("/ask", json={"question": QUESTIONS[0], "adapter": "lora-qbroken"})
        assert response.status_code == 422 and "does not load" in response.json()["error"]
    assert client.post("/ask", json={"question": QUESTIONS[0], "adapter": "lora-q"}).status_code == 200
    # The same check for a query encoder given on its own (--query-encoder).
    with pytest.raises(ValueError, match="is 16-d, the index 32-d"):
        pipeline.load_query_encoder(adapters["lora-q16"] / "query_encoder", "cpu")


def test_rag_serve_ask_retrieves_with_the_adapters_query_encoder(served: tuple[TestClient, Pipeline], adapters: dict[str, Path],
                                                                 tiny_reader_path: str, tiny_encoder_path: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """`rag-serve ask --adapter DIR` embeds the questions with DIR/query_encoder as the server does for that adapter, unless
    --query-encoder names another; a broken adapter_config.json is a message, not a traceback."""
    from serve.cli import main as serve_main

    _, pipeline = served
    argv = ["ask", "--index", str(pipeline.index.path), "--reader", tiny_reader_path, "--k", "3", "--mode", "dense", "--scope", "none",
            "--device", "cpu", "--json"]

    def passages(*options: str) -> list[str]:
        assert serve_main([*argv, *options, QUESTIONS[0]]) == 0
        return [p["id"] for p in json.loads(capsys.readouterr().out)["passages"]]

    served_ids = [h.id for h in pipeline.ask(QUESTIONS[0], k=3, mode="dense", adapter=adapters["lora-q"]).passages]
    assert passages("--adapter", str(adapters["lora-q"])) == served_ids
    assert passages() != served_ids  # the test can tell the encoders apart
    assert passages("--adapter", str(adapters["lora-q"]), "--query-encoder", tiny_encoder_path) == passages()  # the index's own
    assert serve_main([*argv, "--adapter", str(adapters["lora-q16"]), QUESTIONS[0]]) == 2
    assert "is 16-d, the index 32-d" in capsys.readouterr().err
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "adapter_config.json").write_text("{}")
    assert serve_main([*argv, "--adapter", str(tmp_path / "untyped"), QUESTIONS[0]]) == 2
    assert "adapter_config.json names no peft_type" in capsys.readouterr().err


@pytest.mark.parametrize("adapter, message", [("nowhere", "adapter 'nowhere': no such folder"), (".", "not a peft adapter folder"),
                                              ("/etc", "inside the server's adapter folder"), ("../x", "inside the server's adapter folder"),
                                              ("x" * 300, "1 to 255 characters"), ("a\x00b", "without control characters"),
                                              ("\u00e9" * 200, "not a usable folder name"),
                                              # Folders that look like adapters until the reader loads them.
                                              ("bogus", "adapter 'bogus': adapter_config.json names peft_type 'BOGUS', which peft does not know"),
                                              ("garbage", "adapter 'garbage': unreadable adapter_config.json"),
                                              ("weightless", "adapter 'weightless': no weights (adapter_model.safetensors or "
                                                             "adapter_model.bin)")])
def test_ask_with_a_bad_adapter_is_a_422_and_the_server_carries_on(adapter: str, message: str, served: tuple[TestClient, Pipeline],
                                                                   adapters: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    client, _ = served
    root = next(iter(adapters.values())).parent
    for name, config in (("bogus", '{"peft_type": "BOGUS"}'), ("garbage", "{not json"),
                         ("weightless", (adapters["lora-a"] / "adapter_config.json").read_text())):
        (root / name).mkdir(exist_ok=True)
        (root / name / "adapter_config.json").write_text(config)
    response = client.post("/ask", json={"question": "what is topic1?", "adapter": adapter})
    assert response.status_code == 422 and message in response.json()["error"]
    assert str(root) not in response.json()["error"]  # names the adapter as asked, not the server's folders
    assert client.post("/ask", json={"question": "what is topic1?"}).status_code == 200
    # A request the server refuses is no server fault: no error, no traceback in its log for anyone to fill it with.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_server_without_an_adapter_folder_takes_no_adapter(served: tuple[TestClient, Pipeline], adapters: dict[str, Path]) -> None:
    _, pipeline = served
    with TestClient(create_app(pipeline, ServeSettings())) as client:
        response = client.post("/ask", json={"question": "what is topic1?", "adapter": "lora-a"})
        assert response.status_code == 422 and "--adapters" in response.json()["error"]
