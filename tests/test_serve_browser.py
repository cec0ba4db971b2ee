"""The web page in a real headless chromium (Debian's, through its chromedriver) against a real
server on a free loopback port: ask, read the sources, add, update and delete a document, add an edit,
see an answer read from it and revoke it, stats."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.editing import SimilarityScope
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.span_reader import SpanReader
from serve.app import ServeSettings, create_app

TOKEN = "page-token"
N_DOCS = 6
WAIT = 60


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str) -> Iterator[str]:
    path = tmp_path_factory.mktemp("page") / "idx"
    build_index(path, make_documents(N_DOCS), tiny_encoder)
    # Only an edit's own question is in its scope: with a tiny random encoder, any two questions look alike.
    pipeline = Pipeline(Index.open(path, tiny_encoder), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=4),
                        scope=SimilarityScope(0.9999))
    yield from serving(pipeline)


@pytest.fixture(scope="module")
def span_server_url(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_encoder_path: str) -> Iterator[str]:
    path = tmp_path_factory.mktemp("page-span") / "idx"
    build_index(path, make_documents(N_DOCS), tiny_encoder)
    yield from serving(Pipeline(Index.open(path, tiny_encoder), SpanReader.from_encoder(tiny_encoder_path, device="cpu", max_length=64)))


def serving(pipeline: Pipeline) -> Iterator[str]:
    """The page's URL while a server answers with `pipeline`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, ServeSettings(token=TOKEN)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "needs chromium and chromedriver (scripts/install.sh installs them: apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1400"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def text_of(browser: WebDriver, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def wait_for_text(browser: WebDriver, element_id: str, words: str) -> None:
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element((By.ID, element_id), words),
                                       f"#{element_id} never showed {words!r}")


def fill(browser: WebDriver, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def press(browser: WebDriver, button_id: str, message: str) -> None:
    """Click a button and wait for the page's message to say `message`."""
    browser.find_element(By.ID, button_id).click()
    wait_for_text(browser, "message", message)


def ask(browser: WebDriver, question: str, k: int, mode: str) -> list[str]:
    """Ask on the page and return the text of each source shown."""
    # Only a shown answer writes the timings line. Blank it first: two quick answers can print the same
    # rounded timings, and waiting for the text to change then hung until the timeout.
    browser.execute_script('document.getElementById("timings").textContent = ""')
    fill(browser, "question", question)
    fill(browser, "k", str(k))
    Select(browser.find_element(By.ID, "mode")).select_by_value(mode)
    browser.find_element(By.ID, "ask-button").click()
    WebDriverWait(browser, WAIT).until(lambda b: b.find_element(By.ID, "answer-box").is_displayed()
                                       and text_of(b, "timings") != "" and b.find_element(By.ID, "ask-button").is_enabled())
    return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#sources li")]


def test_the_page_asks_and_edits_documents(browser: WebDriver, server_url: str, tmp_path: Path) -> None:
    browser.get(server_url)
    wait_for_text(browser, "stat-documents", str(N_DOCS))

    sources = ask(browser, "what is topic3?", k=2, mode="hybrid")
    assert len(sources) == 2 and sources[0].startswith("Title 3") and "doc-3#0" in sources[0]
    assert "ms (retrieve" in text_of(browser, "timings")

    # Add a document: with the token it is written, and the next question finds it.
    fill(browser, "doc-id", "page-doc")
    fill(browser, "doc-title", "Page document")
    fill(browser, "doc-text", "quokkas live on rottnest island")
    fill(browser, "token", "wrong")
    press(browser, "doc-save", "401")
    fill(browser, "token", TOKEN)
    press(browser, "doc-save", "page-doc added")
    wait_for_text(browser, "stat-documents", str(N_DOCS + 1))
    assert ask(browser, "quokkas", k=1, mode="sparse")[0].startswith("Page document")

    # Update it, load it back through a source's edit button, then delete it.
    fill(browser, "doc-text", "quokkas smile on rottnest island")
    press(browser, "doc-save", "page-doc updated")
    assert "quokkas smile" in ask(browser, "quokkas", k=1, mode="sparse")[0]
    fill(browser, "doc-id", "")
    fill(browser, "doc-text", "")
    browser.find_element(By.CSS_SELECTOR, "#sources li button").click()
    wait_for_text(browser, "message", "loaded page-doc (version 2")
    assert browser.find_element(By.ID, "doc-text").get_attribute("value") == "quokkas smile on rottnest island"
    press(browser, "doc-delete", "page-doc deleted")
    wait_for_text(browser, "stat-documents", str(N_DOCS))
    assert not any(s.startswith("Page document") for s in ask(browser, "quokkas", k=3, mode="sparse"))

    # A server error message reaches the page: the question is too long.
    fill(browser, "question", "x" * 2100)
    press(browser, "ask-button", "413")
    browser.save_screenshot(str(tmp_path / "page.png"))  # for a person looking into a failure


def test_the_page_marks_the_passage_a_span_reader_read_its_answer_from(browser: WebDriver, span_server_url: str) -> None:
    browser.get(span_server_url)
    sources = ask(browser, "what is topic3?", k=3, mode="hybrid")
    marked = browser.find_elements(By.CSS_SELECTOR, "#sources li.answer-source")
    assert len(sources) == 3 and len(marked) == 1
    assert "the answer's source" in marked[0].text
    assert marked[0].find_element(By.TAG_NAME, "mark").text == text_of(browser, "answer")  # the answer, highlighted
    # Offsets count code points: characters beyond the BMP (two UTF-16 units each in JavaScript) before the answer.
    text = "\U0001F600 \U0001D518 quokkas live on rottnest island"
    httpx.post(f"{span_server_url}documents", json={"documents": [{"id": "wide", "title": "Wide", "text": text}]},
               headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    assert ask(browser, "quokkas rottnest", k=1, mode="sparse")[0].startswith("Wide")
    answer = text_of(browser, "answer")
    assert answer in text and browser.find_element(By.CSS_SELECTOR, "li.answer-source mark").text == answer


def test_the_page_adds_shows_and_revokes_an_edit(browser: WebDriver, server_url: str, tmp_path: Path) -> None:
    browser.get(server_url)
    wait_for_text(browser, "stat-edits", "0")
    wait_for_text(browser, "edits", "no edits")
    question, fact = "who painted the quokka mural?", "The quokka mural was painted by Ada Lovelace."
    ask(browser, question, k=1, mode="hybrid")
    assert not browser.find_element(By.ID, "answer-edit").is_displayed()

    fill(browser, "token", TOKEN)
    fill(browser, "edit-fact", fact)
    fill(browser, "edit-question", question)
    fill(browser, "edit-answer", "Ada Lovelace")
    browser.find_element(By.ID, "edit-save").click()
    wait_for_text(browser, "edits", fact)
    item = browser.find_element(By.CSS_SELECTOR, "#edits li")
    edit_id = item.get_attribute("data-id")
    assert f"edit {edit_id} added" in text_of(browser, "message") and "Q: who painted the quokka mural? → Ada Lovelace" in item.text
    wait_for_text(browser, "stat-edits", "1")
    assert browser.find_element(By.ID, "edit-fact").get_attribute("value") == ""  # the form is ready for the next one

    ask(browser, question, k=1, mode="hybrid")
    assert text_of(browser, "answer-edit") == f"answered from edit {edit_id}: {fact}"
    ask(browser, "what is topic3?", k=1, mode="hybrid")  # another question is not about it
    assert not browser.find_element(By.ID, "answer-edit").is_displayed()

    item.find_element(By.CSS_SELECTOR, "button").click()
    wait_for_text(browser, "message", f"edit {edit_id} revoked")
    wait_for_text(browser, "edits", "no edits")
    wait_for_text(browser, "stat-edits", "0")
    ask(browser, question, k=1, mode="hybrid")
    assert not browser.find_element(By.ID, "answer-edit").is_displayed()
    # Revoked edits stay in the log: the page shows them on request, without a revoke button.
    browser.find_element(By.ID, "edits-all").click()
    wait_for_text(browser, f"edit-{edit_id}", "revoked")
    assert not browser.find_elements(By.CSS_SELECTOR, f"#edit-{edit_id} button")
    browser.save_screenshot(str(tmp_path / "edits.png"))  # for a person looking into a failure


def test_the_page_keeps_metadata_and_leaves_k_and_mode_to_the_server(browser: WebDriver, server_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = {"id": "meta-doc", "title": "Meta", "text": "wombats dig burrows", "source": "field notes", "page": 7}
    assert httpx.post(server_url + "documents", json={"documents": [doc]}, headers=auth).status_code == 200
    browser.get(server_url)
    wait_for_text(browser, "stat-documents", str(N_DOCS + 1))
    fill(browser, "token", TOKEN)
    fill(browser, "doc-id", "meta-doc")
    press(browser, "doc-load", "loaded meta-doc")
    fill(browser, "doc-text", "wombats dig long burrows")
    press(browser, "doc-save", "meta-doc updated")
    saved = httpx.get(server_url + "documents/meta-doc").json()
    assert saved["text"] == "wombats dig long burrows" and saved["meta"] == {"source": "field notes", "page": 7}

    # An empty passages box and the default retrieval leave k and mode to the server (--k 5, --mode hybrid).
    WebDriverWait(browser, WAIT).until(lambda b: b.find_element(By.ID, "k").get_attribute("placeholder") == "default 5")
    assert Select(browser.find_element(By.ID, "mode")).first_selected_option.text == "default (hybrid)"
    browser.execute_script('document.getElementById("timings").textContent = ""')
    fill(browser, "question", "wombats")
    browser.find_element(By.ID, "ask-button").click()
    WebDriverWait(browser, WAIT).until(lambda b: text_of(b, "timings") != "")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sources li")) == 5
    assert httpx.delete(server_url + "documents/meta-doc", headers=auth).status_code == 200


def test_loading_a_missing_document_blanks_the_form(browser: WebDriver, server_url: str) -> None:
    """Else Save would copy the document shown before under the new id, with its metadata."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = {"id": "shown-doc", "title": "Shown", "text": "echidnas lay eggs", "source": "field notes"}
    assert httpx.post(server_url + "documents", json={"documents": [doc]}, headers=auth).status_code == 200
    browser.get(server_url)
    fill(browser, "token", TOKEN)
    fill(browser, "doc-id", "shown-doc")
    press(browser, "doc-load", "loaded shown-doc")
    fill(browser, "doc-id", "new-doc")
    press(browser, "doc-load", "no document new-doc yet")
    assert [browser.find_element(By.ID, f).get_attribute("value") for f in ("doc-id", "doc-title", "doc-text")] == ["new-doc", "", ""]
    fill(browser, "doc-title", "New")
    fill(browser, "doc-text", "platypuses glow under ultraviolet light")
    press(browser, "doc-save", "new-doc added")
    saved = httpx.get(server_url + "documents/new-doc").json()
    assert (saved["title"], saved["meta"]) == ("New", {})
    assert httpx.get(server_url + "documents/shown-doc").json()["text"] == "echidnas lay eggs"
    for doc_id in ("shown-doc", "new-doc"):
        assert httpx.delete(server_url + "documents/" + doc_id, headers=auth).status_code == 200


def test_the_api_page_works_offline(browser: WebDriver, server_url: str) -> None:
    browser.get(server_url + "docs")
    WebDriverWait(browser, WAIT).until(
        lambda b: "/ask" in [e.text for e in b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")],
        "Swagger UI did not list /ask")
