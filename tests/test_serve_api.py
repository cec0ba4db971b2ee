"""The HTTP API in process (FastAPI's TestClient) on tiny models: answers, micro-batching, writes,
edits, tokens, metrics, and every kind of bad request getting a 4xx that names the problem."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from conftest import hold_answers, make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.editing import SimilarityScope
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.span_reader import SpanReader
from serve.app import ServeSettings, create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_DOCS = 12
# With a tiny random encoder any two questions look alike (cosine 0.8 to 0.99): only an edit's own question
# (cosine 1) is in its scope, which makes the scope decision deterministic.
EXACT = SimilarityScope(0.9999)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str) -> Pipeline:
    path = tmp_path_factory.mktemp("serve-api") / "idx"
    build_index(path, make_documents(N_DOCS), tiny_encoder)
    return Pipeline(Index.open(path, tiny_encoder), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4), scope=EXACT)


@pytest.fixture(scope="module")
def client(pipeline: Pipeline) -> Iterator[TestClient]:
    # A long batching window makes concurrent questions reliably share a batch on a busy machine.
    settings = ServeSettings(token=TOKEN, max_batch=8, max_wait_ms=300, max_question_chars=200, max_documents=5,
                             max_body_bytes=64 * 1024)
    with TestClient(create_app(pipeline, settings)) as client:
        yield client


def ask(client: TestClient, question: str, **options: Any) -> dict[str, Any]:
    response = client.post("/ask", json={"question": question, **options})
    assert response.status_code == 200, response.text
    return response.json()


def upsert(client: TestClient, *docs: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/documents", json={"documents": list(docs)}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def add_edit(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/edits", json=fields, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def revoke(client: TestClient, edit_id: str) -> dict[str, Any]:
    response = client.delete(f"/edits/{edit_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_ask_answers_with_passages_and_timings(client: TestClient, pipeline: Pipeline) -> None:
    body = ask(client, "what is topic3?", k=2, mode="hybrid")
    assert body["passages"][0]["doc_id"] == "doc-3" and len(body["passages"]) == 2
    assert set(body["passages"][0]) == {"id", "doc_id", "title", "text", "score"}
    assert body["edit"] is None and body["asked_as"] is None and body["beyond"] is False and body["answered_by"] is None
    assert body["source"] is None  # a generative reader writes its answer from all the passages
    assert {"edit_ms", "retrieve_ms", "read_ms", "total_ms", "queue_ms", "server_ms"} <= set(body["timings"])
    assert body["answer"] == pipeline.ask("what is topic3?", k=2, mode="hybrid").text
    assert ask(client, "who?", k=0)["passages"] == []  # closed book
    assert len(ask(client, "what is topic5?")["passages"]) == 5  # the server's default k


def test_a_span_readers_answer_names_the_passage_it_was_read_from(tmp_path: Path, tiny_encoder: TextEncoder,
                                                                 tiny_encoder_path: str) -> None:
    build_index(tmp_path / "idx", make_documents(N_DOCS), tiny_encoder)
    reader = SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64)
    with TestClient(create_app(Pipeline(Index.open(tmp_path / "idx", tiny_encoder), reader), ServeSettings())) as span_client:
        body = ask(span_client, "what is topic3?", k=3)
    texts = {p["id"]: p["text"] for p in body["passages"]}
    source = body["source"]
    assert source["passage"] in texts and body["answer"] and texts[source["passage"]][source["start"] : source["end"]] == body["answer"]


def test_concurrent_questions_share_batches_grouped_by_k_and_mode(client: TestClient, pipeline: Pipeline) -> None:
    requests = [(f"what is topic{i}?", 2 if i % 2 else 3, "hybrid" if i % 2 else "dense") for i in range(8)]
    results: dict[int, dict[str, Any]] = {}
    start = threading.Barrier(len(requests))

    def one(i: int) -> None:
        question, k, mode = requests[i]
        start.wait()
        results[i] = ask(client, question, k=k, mode=mode)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == len(requests)
    assert max(r["batch_size"] for r in results.values()) > 1, "no two concurrent questions shared a batch"
    for i, (question, k, mode) in enumerate(requests):
        assert len(results[i]["passages"]) == k  # each answered with its own k and mode
        alone = pipeline.ask(question, k=k, mode=mode)
        assert results[i]["answer"] == alone.text
        assert [p["id"] for p in results[i]["passages"]] == [p.id for p in alone.passages]


def test_a_question_after_a_write_sees_it(client: TestClient) -> None:
    report = upsert(client, {"id": "fresh/1", "title": "Fresh", "text": "zanzibar spice island", "source": "api"})
    assert report["documents_added"] == 1
    doc = client.get("/documents/fresh%2F1").json()
    assert doc["text"] == "zanzibar spice island" and doc["meta"] == {"source": "api"} and doc["version"] == 1
    assert ask(client, "zanzibar", k=1, mode="sparse")["passages"][0]["doc_id"] == "fresh/1"

    assert upsert(client, {"id": "fresh/1", "title": "Fresh", "text": "zanzibar clove harbour"})["documents_updated"] == 1
    hit = ask(client, "zanzibar", k=1, mode="sparse")["passages"][0]
    assert hit["text"] == "zanzibar clove harbour"
    assert client.get("/documents/fresh/1").json()["version"] == 2

    assert client.delete("/documents/fresh/1", headers=AUTH).json()["documents_deleted"] == 1
    assert client.get("/documents/fresh/1").status_code == 404
    assert all(p["doc_id"] != "fresh/1" for p in ask(client, "zanzibar", k=3, mode="sparse")["passages"])


def test_writes_need_the_token_and_reads_do_not(client: TestClient, pipeline: Pipeline) -> None:
    doc = {"documents": [{"id": "guarded", "text": "needs a token"}]}
    edit = {"fact": "Guarded facts need a token."}
    kept = add_edit(client, fact="A kept fact stays.")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path, body in (("POST", "/documents", doc), ("POST", "/edits", edit), ("DELETE", "/documents/doc-1", None),
                                   ("DELETE", f"/edits/{kept['id']}", None)):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401 and "Authorization: Bearer" in response.json()["error"], (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/documents/doc-1").status_code == 200
    assert client.get("/documents/guarded").status_code == 404  # nothing was written
    # The scheme is case-insensitive (RFC 9110), and the token is compared whole.
    assert client.post("/documents", json=doc, headers={"Authorization": f"bearer  {TOKEN}"}).status_code == 200
    assert client.delete("/documents/guarded", headers=AUTH).status_code == 200
    assert client.get(f"/edits/{kept['id']}").json()["active"]
    assert edit["fact"] not in [e["fact"] for e in client.get("/edits?all=true").json()["edits"]]
    revoke(client, kept["id"])
    # A token with letters beyond ASCII is compared as the UTF-8 bytes the client sent, whole (à is C3 A0).
    with TestClient(create_app(pipeline, ServeSettings(token="passà"))) as accented:
        assert accented.post("/documents", json=doc, headers={"Authorization": b"Bearer pass\xc3\xa0"}).status_code == 200
        assert accented.post("/documents", json=doc, headers={"Authorization": b"Bearer pass\xc3"}).status_code == 401
        assert accented.delete("/documents/guarded", headers={"Authorization": "Bearer passà".encode()}).status_code == 200
    # Without a token, writes are open.
    with TestClient(create_app(pipeline, ServeSettings(token=None))) as open_client:
        assert open_client.post("/documents", json=doc).status_code == 200
        assert open_client.delete("/documents/guarded").status_code == 200
        made = open_client.post("/edits", json=edit)
        assert made.status_code == 200
        assert open_client.delete(f"/edits/{made.json()['id']}").status_code == 200


def test_an_edit_whose_subject_nothing_names_comes_back_with_a_warning(client: TestClient) -> None:
    made = add_edit(client, fact="The harbour ferry leaves from Tanga.", subject="Zanzibar ferry")
    assert made["subject"] == "Zanzibar ferry" and "'Zanzibar ferry' is named in neither" in made["warning"]
    assert [e for e in client.get("/edits").json()["edits"] if e["id"] == made["id"]] == [made]
    detail = client.get(f"/edits/{made['id']}").json()
    assert detail["warning"] == made["warning"] and detail["history"] == [made]
    revoke(client, made["id"])


def test_an_edit_answers_its_question_until_revoked(client: TestClient, pipeline: Pipeline) -> None:
    question, other = "who painted the quokka mural?", "what is topic3?"
    before, other_before = ask(client, question, k=2), ask(client, other, k=2)
    assert before["edit"] is None
    made = add_edit(client, fact="The quokka mural was painted by Ada Lovelace.", question=question,
                    answer="Ada Lovelace", subject="quokka mural")
    assert made["id"].startswith("e") and made["active"] and made["revoked_at"] is None and made["supersedes"] is None
    assert made["warning"] is None
    assert (made["fact"], made["question"], made["answer"], made["subject"]) == (
        "The quokka mural was painted by Ada Lovelace.", question, "Ada Lovelace", "quokka mural")
    assert made in client.get("/edits").json()["edits"]
    assert client.get("/stats").json()["edits"] >= 1

    edited = ask(client, question, k=2)
    assert edited["edit"] == made and edited["asked_as"] is None and not edited["beyond"] and "edit_ms" in edited["timings"]
    # The answer is the one the edit states, and the passages are still retrieved and shown.
    assert edited["answer"] == "Ada Lovelace"
    assert [p["id"] for p in edited["passages"]] == [p["id"] for p in before["passages"]]
    unrelated = ask(client, other, k=2)
    assert unrelated["edit"] is None and unrelated["answer"] == other_before["answer"]
    assert unrelated["passages"] == other_before["passages"]

    revoked = revoke(client, made["id"])
    assert revoked["id"] == made["id"] and not revoked["active"] and revoked["revoked_at"] is not None
    after = ask(client, question, k=2)
    assert after["edit"] is None and after["answer"] == before["answer"] and after["passages"] == before["passages"]
    assert made["id"] not in [e["id"] for e in client.get("/edits").json()["edits"]]
    assert revoked in client.get("/edits?all=true").json()["edits"]
    detail = client.get(f"/edits/{made['id']}").json()
    assert detail["history"] == [revoked] and {k: v for k, v in detail.items() if k != "history"} == revoked

    again = client.delete(f"/edits/{made['id']}", headers=AUTH)
    assert again.status_code == 422 and "already revoked" in again.json()["error"]


def test_a_newer_edit_replaces_the_one_with_the_same_question(client: TestClient) -> None:
    question = "Where does the zanzibar ferry leave from?"
    first = add_edit(client, fact="The zanzibar ferry leaves from Dar es Salaam.", question=question)
    # The same question up to case, spacing and end punctuation.
    second = add_edit(client, fact="The zanzibar ferry leaves from Mombasa.", question=" where does the ZANZIBAR  ferry leave from")
    assert second["supersedes"] == first["id"]
    assert ask(client, " where does the ZANZIBAR  ferry leave from", k=1)["edit"] == second
    assert ask(client, question, k=1)["edit"] == second  # the same question up to case and spacing: the replacement answers it
    listed = [e["id"] for e in client.get("/edits").json()["edits"]]
    assert second["id"] in listed and first["id"] not in listed
    history = client.get(f"/edits/{first['id']}").json()["history"]
    assert [e["id"] for e in history] == [first["id"], second["id"]] and history[0]["superseded_by"] == second["id"]

    # Superseding an edit that is no longer active, or one that does not exist, is refused.
    stale = client.post("/edits", json={"fact": "It leaves from Tanga.", "supersedes": first["id"]}, headers=AUTH)
    assert stale.status_code == 422 and "no longer active" in stale.json()["error"]
    unknown = client.post("/edits", json={"fact": "It leaves from Tanga.", "supersedes": "e999999"}, headers=AUTH)
    assert unknown.status_code == 404 and "no edit 'e999999' to supersede" in unknown.json()["error"]

    # Revoking the newer edit brings back the one it had replaced.
    revoke(client, second["id"])
    assert ask(client, question, k=1)["edit"]["id"] == first["id"]
    explicit = add_edit(client, fact="The zanzibar ferry leaves from Tanga.", supersedes=first["id"])
    assert explicit["supersedes"] == first["id"] and ask(client, question, k=1)["edit"] is None  # its key is the fact
    revoke(client, explicit["id"])
    revoke(client, first["id"])
    assert client.get("/edits").json()["edits"] == []


def test_reads_during_writes_see_whole_changes_and_are_not_held_up(client: TestClient) -> None:
    """A writer rewrites five documents to version v, one change per v; every answer sees one version."""
    def version_docs(v: int) -> list[dict[str, str]]:
        return [{"id": f"swap-{j}", "title": "Swap", "text": f"swapword ver{v} part {j}"} for j in range(5)]

    upsert(client, *version_docs(0))
    # The writer goes on until three answers came back while it wrote (a cap keeps a stuck reader from
    # looping forever): how many versions fit in one answer depends on the machine, not on the code.
    reads_while_writing = 0
    done = threading.Event()
    versions = 0

    def writer() -> None:
        nonlocal versions
        while reads_while_writing < 3 and versions < 400:
            versions += 1
            upsert(client, *version_docs(versions))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    while not done.is_set():
        passages = ask(client, "swapword", k=5, mode="sparse")["passages"]
        words = {p["text"].split()[1] for p in passages if p["doc_id"].startswith("swap-")}
        assert len(words) == 1 and len(passages) == 5, f"one answer saw several versions: {words}"
        seen.append(int(words.pop()[3:]))
        reads_while_writing += not done.is_set()
    thread.join(60)
    assert reads_while_writing >= 3, f"only {reads_while_writing} answers came back during {versions} writes"
    assert seen == sorted(seen)  # never back to an older version
    assert ask(client, "swapword", k=5, mode="sparse")["passages"][0]["text"].split()[1] == f"ver{versions}"


def test_health_stats_metrics_and_api_pages(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8
    assert health["k"] == 5 and health["mode"] == "hybrid"  # what a question gets when it does not say
    assert client.head("/health").status_code == 200
    assert health["scope"] == "similarity"
    stats = client.get("/stats").json()
    assert stats["documents"] >= N_DOCS and stats["generation"] == health["generation"]
    ask(client, "what is topic1?", k=1)
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert f"rag_index_generation {float(stats['generation'])}" in text
    assert f"rag_index_documents {float(stats['documents'])}" in text
    assert 'rag_http_requests_total{method="POST",route="/ask",status="200"}' in text
    assert 'rag_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/ask"}' in text
    assert "rag_ask_batch_size_count" in text and "rag_index_bytes" in text
    # No client can make a new series: a made-up method is "other", and a body refused before routing counts
    # under the route it was sent to.
    for n in range(3):
        client.request(f"X{n}", "/health")
    client.post("/ask", content=b"question=q", headers={"Content-Type": "text/plain"})
    text = client.get("/metrics").text
    assert 'method="X0"' not in text and 'rag_http_requests_total{method="other",route="/health",status="405"} 3.0' in text
    assert 'rag_http_requests_total{method="POST",route="/ask",status="415"}' in text
    # A client that goes away mid-upload got no answer, and the server did not fail: 499, not 500.
    upload = iter([{"type": "http.request", "body": b'{"documents": [', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(upload)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/documents", "raw_path": b"/documents", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    client.portal.call(client.app, scope, receive, send)
    text = client.get("/metrics").text
    assert sent == [] and 'rag_http_requests_total{method="POST",route="/documents",status="499"} 1.0' in text
    assert 'route="/documents",status="500"' not in text
    assert f"rag_index_edits {float(stats['edits'])}" in text and f"rag_index_edits_recorded {float(stats['edits_total'])}" in text
    schema = client.get("/openapi.json").json()
    assert {"/ask", "/documents", "/documents/{doc_id}", "/edits", "/edits/{edit_id}", "/health", "/stats",
            "/metrics"} <= set(schema["paths"])
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    # (method, path, keyword arguments for the client, status, words the error must contain)
    ("post", "/ask", {"json": {"question": ""}}, 422, "empty question"),
    ("post", "/ask", {"json": {"question": "   \n"}}, 422, "empty question"),
    ("post", "/ask", {"json": {"question": "x" * 201}}, 413, "at most 200"),
    ("post", "/ask", {"json": {}}, 422, "body.question: Field required"),
    ("post", "/ask", {"json": {"question": 5}}, 422, "body.question: Input should be a valid string"),
    ("post", "/ask", {"json": {"question": "q?", "k": "5"}}, 422, "body.k: Input should be a valid integer"),
    ("post", "/ask", {"json": {"question": "q?", "k": True}}, 422, "body.k: Input should be a valid integer"),
    ("post", "/ask", {"json": {"question": "q?", "k": 2.5}}, 422, "body.k"),
    ("post", "/ask", {"json": {"question": "q?", "k": -1}}, 422, "greater than or equal to 0"),
    ("post", "/ask", {"json": {"question": "q?", "k": 10**6}}, 422, "less than or equal to 100"),
    ("post", "/ask", {"json": {"question": "q?", "mode": "fuzzy"}}, 422, "body.mode"),
    ("post", "/ask", {"json": {"question": "q?", "qestion": "typo"}}, 422, "body.qestion: Extra inputs are not permitted"),
    ("post", "/ask", {"json": ["q?"]}, 422, "valid dictionary"),
    ("post", "/ask", {"content": b'{"question": "unfinished', "headers": JSON}, 400, "not valid JSON"),
    ("post", "/ask", {"content": b'{"question": "a\tb"}', "headers": JSON}, 400, "Invalid control character at offset 15"),
    # Nothing a reader could see: control and format characters are as blank as spaces.
    ("post", "/ask", {"json": {"question": "\x00\u200b"}}, 422, "empty question"),
    ("post", "/ask", {"content": b"", "headers": JSON}, 422, "Field required"),
    ("post", "/ask", {"content": b'{"question": "caf\xe9?"}', "headers": JSON}, 400, "not UTF-8 text: byte 0xe9 at offset 17"),
    ("post", "/ask", {"content": b'{"question": "\\ud800 lone"}', "headers": JSON}, 422, "unpaired surrogate"),
    ("post", "/ask", {"content": b"question=q", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
     "Content-Type: application/json"),
    ("post", "/ask", {"content": b'{"question": "' + b"x" * 70_000 + b'"}', "headers": JSON}, 413, "at most 65,536"),
    ("get", "/ask", {}, 405, "Method Not Allowed"),
    ("get", "/no-such-page", {}, 404, "Not Found"),
    ("get", "/documents/no-such-doc", {}, 404, "no document with id 'no-such-doc'"),
    ("delete", "/documents/no-such-doc", {"headers": AUTH}, 404, "nothing was deleted"),
    ("post", "/documents", {"json": {"documents": []}, "headers": AUTH}, 422, "at least 1 item"),
    ("post", "/documents", {"json": [{"id": "a", "text": "b"}], "headers": AUTH}, 422, "valid dictionary"),
    ("post", "/documents", {"json": {"documents": [{"id": "a"}]}, "headers": AUTH}, 422, "documents.0.text: Field required"),
    ("post", "/documents", {"json": {"documents": [{"id": "a#1", "text": "b"}]}, "headers": AUTH}, 422, "contains '#'"),
    ("post", "/documents", {"json": {"documents": [{"id": " a", "text": "b"}]}, "headers": AUTH}, 422, "white space"),
    ("post", "/documents", {"json": {"documents": [{"id": "a", "text": " \t"}]}, "headers": AUTH}, 422, "must not be blank"),
    ("post", "/documents", {"json": {"documents": [{"id": "a", "text": "\x01\x02"}]}, "headers": AUTH}, 422, "must not be blank"),
    # Clients resolve "." and ".." out of a URL path: GET and DELETE could never name such a document.
    ("post", "/documents", {"json": {"documents": [{"id": "..", "text": "b"}]}, "headers": AUTH}, 422, "or be '.' or '..'"),
    ("post", "/documents", {"json": {"documents": [{"id": "a" * 513, "text": "b"}]}, "headers": AUTH}, 422, "1 to 512 characters, not 513"),
    ("post", "/documents", {"json": {"documents": [{"id": "", "text": "b"}]}, "headers": AUTH}, 422, "1 to 512 characters, not 0"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "\\ud800", "text": "b"}]}', "headers": {**JSON, **AUTH}},
     422, "documents.0.id: the text is not valid Unicode: unpaired surrogate"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "\\ud800"}]}', "headers": {**JSON, **AUTH}},
     422, "documents.0.text: the text is not valid Unicode: unpaired surrogate"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "\\udc00k": 1}]}', "headers": {**JSON, **AUTH}},
     422, "meta is not valid Unicode: unpaired surrogate '\\udc00'"),
    ("post", "/documents", {"json": {"documents": [{"id": 7, "text": "b"}]}, "headers": AUTH}, 422, "documents.0.id"),
    ("post", "/documents", {"json": {"documents": [{"id": "a", "text": "b"}] * 2}, "headers": AUTH}, 422, "appears twice"),
    ("post", "/documents", {"json": {"documents": [{"id": f"d{i}", "text": "b"} for i in range(6)]}, "headers": AUTH},
     413, "at most 5"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "note": "\\udfff"}]}',
                            "headers": {**JSON, **AUTH}}, 422, "unpaired surrogate"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "note": {"in": ["\\udfff"]}}]}',
                            "headers": {**JSON, **AUTH}}, 422, "meta.note.in.0 is not valid Unicode: unpaired surrogate"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "x": [1, NaN]}]}', "headers": {**JSON, **AUTH}},
     422, "meta.x.1: nan is not a JSON number"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "x": -Infinity}]}', "headers": {**JSON, **AUTH}},
     422, "meta.x: -inf is not a JSON number"),
    # Each passage carries its document's title; metadata deeper than JSON serialisers go could never be read back.
    ("post", "/documents", {"json": {"documents": [{"id": "a", "title": "T" * 1001, "text": "b"}]}, "headers": AUTH},
     422, "document 'a' has a title of 1,001 characters; at most 1,000"),
    ("post", "/documents", {"content": b'{"documents": [{"id": "a", "text": "b", "m": ' + b"[" * 300 + b"]" * 300 + b"}]}",
                            "headers": {**JSON, **AUTH}}, 422, "document 'a' has metadata nested more than 32 levels deep"),
    # A URL path cannot carry a control character: such an id could never be read or deleted.
    ("post", "/documents", {"json": {"documents": [{"id": "a\nb", "text": "b"}]}, "headers": AUTH}, 422, "control characters"),
    ("post", "/documents", {"json": {"documents": [{"id": "\x1c", "text": "b"}]}, "headers": AUTH}, 422, "control characters"),
    ("post", "/ask", {"content": b'{"question": "q?", "k": ' + b"9" * 5000 + b"}", "headers": JSON}, 400,
     "not JSON this server reads: Exceeds the limit (4300 digits)"),
    ("post", "/ask", {"content": b'{"question": "q?", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "headers": JSON},
     400, "nested too deeply"),
    ("post", "/edits", {"json": {}, "headers": AUTH}, 422, "body.fact: Field required"),
    ("post", "/edits", {"json": {"fact": ""}, "headers": AUTH}, 422, "body.fact: must not be blank"),
    ("post", "/edits", {"json": {"fact": " \n"}, "headers": AUTH}, 422, "body.fact: must not be blank"),
    ("post", "/edits", {"json": {"fact": "f", "question": "  "}, "headers": AUTH}, 422, "body.question: must not be blank"),
    ("post", "/edits", {"json": {"fact": "\x01"}, "headers": AUTH}, 422, "body.fact: must not be blank"),
    ("post", "/edits", {"json": {"fact": "f", "answer": "a"}, "headers": AUTH}, 422, "an answer needs its question"),
    ("post", "/edits", {"json": {"fact": 5}, "headers": AUTH}, 422, "body.fact: Input should be a valid string"),
    ("post", "/edits", {"json": {"fact": "f", "subject": ["s"]}, "headers": AUTH}, 422, "body.subject: Input should be a valid string"),
    ("post", "/edits", {"json": {"fact": "f", "sources": "x"}, "headers": AUTH}, 422, "body.sources: Extra inputs are not permitted"),
    ("post", "/edits", {"json": {"fact": "x" * 2001}, "headers": AUTH}, 422, "body.fact: 2,001 characters; at most 2,000"),
    ("post", "/edits", {"json": ["fact"], "headers": AUTH}, 422, "valid dictionary"),
    ("post", "/edits", {"content": b'{"fact": "\\ud800"}', "headers": {**JSON, **AUTH}}, 422, "unpaired surrogate"),
    ("post", "/edits", {"json": {"fact": "f", "supersedes": "e404404"}, "headers": AUTH}, 404, "no edit 'e404404' to supersede"),
    ("post", "/edits", {"json": {"fact": "f", "supersedes": "mine"}, "headers": AUTH}, 404, "no edit 'mine' to supersede"),
    ("get", "/edits/e404404", {}, 404, "no edit 'e404404': edit ids look like e1, e2"),
    ("get", "/edits/zebra", {}, 404, "no edit 'zebra'"),
    ("delete", "/edits/e404404", {"headers": AUTH}, 404, "no edit 'e404404'"),
    ("delete", "/edits/e0", {"headers": AUTH}, 404, "GET /edits?all=true lists every edit"),
]


@pytest.mark.parametrize("method, path, kwargs, status, message", BAD_REQUESTS,
                         ids=[f"{m}-{p}-{n}" for n, (m, p, *_) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_that_says_what_was_wrong(client: TestClient, method: str, path: str,
                                                         kwargs: dict[str, Any], status: int, message: str) -> None:
    response = client.request(method.upper(), path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_odd_but_valid_input_is_answered(client: TestClient) -> None:
    """NUL characters, emoji (also as a JSON surrogate pair), right-to-left text and ids with slashes are just text."""
    for question in ("topic1\x00?", "what about \U0001F600 topic2?", "ما هو topic3؟"):
        assert client.post("/ask", json={"question": question, "k": 1}).status_code == 200
    # A body that does not say what it is is taken for JSON (Python's requests with data= sends no Content-Type).
    assert client.post("/ask", content=b'{"question": "topic1?", "k": 1}').json()["question"] == "topic1?"
    pair = client.post("/ask", content=b'{"question": "\\ud83d\\ude00 topic2?", "k": 1}', headers=JSON)
    assert pair.status_code == 200 and pair.json()["question"] == "\U0001F600 topic2?"
    odd = {"id": "odd/\u00e9 \U0001F600", "title": "\x00", "text": "nul\x00 text \u202e reversed"}
    assert upsert(client, odd)["documents_added"] == 1
    assert client.get(f"/documents/{quote(odd['id'], safe='')}").json()["text"] == odd["text"]
    assert client.delete(f"/documents/{quote(odd['id'], safe='')}", headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200


def test_a_server_with_max_k_refuses_more_passages(pipeline: Pipeline) -> None:
    with TestClient(create_app(pipeline, ServeSettings(k=2, max_k=2))) as capped:
        assert len(capped.post("/ask", json={"question": "what is topic1?"}).json()["passages"]) == 2
        response = capped.post("/ask", json={"question": "what is topic1?", "k": 3})
        assert response.status_code == 422 and "at most 2 passages a question (--max-k)" in response.json()["error"]


def test_questions_cut_off_by_shutdown_get_a_503_that_says_so(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn cancels the requests still running when its graceful shutdown times out, before the app's own
    shutdown runs: the client hears why, as JSON, not a bare 500."""
    release, answering = hold_answers(pipeline, monkeypatch)  # a generation that outlasts the shutdown
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline), log_level="critical", timeout_graceful_shutdown=0.5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    replies: list[httpx.Response] = []
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/ask"
    asker = threading.Thread(target=lambda: replies.append(httpx.post(url, json={"question": "what is topic1?"}, timeout=30)))
    asker.start()
    assert answering.wait(30)
    server.should_exit = True
    asker.join(30)
    release.set()
    thread.join(30)
    assert replies[0].status_code == 503 and replies[0].headers["retry-after"] == "1"
    assert "the server is shutting down" in replies[0].json()["error"]
