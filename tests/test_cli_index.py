"""`rag-index` in-process: JSON output, updates, and errors that leave nothing half-done."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_documents, write_jsonl
from indexer.records import Document
from indexer.cli import main
from indexer.encoder import bf16_in_hardware
from indexer.index import Index

HIT_KEYS = {"id", "doc_id", "title", "text", "score"}


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def folder_state(path: Path) -> dict[str, bytes]:
    """Every file of a folder with its content, to show a command changed nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_documents(10))


@pytest.fixture()
def built(tmp_path: Path, corpus: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "idx"
    code, stdout, err = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet")
    assert code == 0, err
    return out


def assert_no_index(tmp_path: Path, name: str = "idx") -> None:
    assert not (tmp_path / name).exists()
    assert not [p.name for p in tmp_path.iterdir() if ".building-" in p.name]


# -- the happy paths -------------------------------------------------------------------------------
def test_build_reports_json_and_stats_match(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "idx"
    code, stdout, _ = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet")
    assert code == 0
    report = json.loads(stdout)
    assert report["index"] == str(out) and report["documents_added"] == 10 and report["skipped"] == 0
    assert report["generation"] == 1 and report["passages_encoded"] == 10
    code, stdout, _ = run(capsys, "stats", "--index", out)
    assert code == 0
    stats = json.loads(stdout)
    assert stats["documents"] == 10 and stats["passages"] == 10 and stats["deleted"] == 0
    assert stats["encoder"] == tiny_encoder_path and stats["dim"] == 32 and stats["generation"] == 1
    assert stats["dense"] == "flat" and stats["sparse"] is True and stats["bytes"] > 0


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_search_prints_json_lines(built: Path, capsys: pytest.CaptureFixture, mode: str) -> None:
    code, stdout, _ = run(capsys, "search", "--index", built, "--k", "3", "--mode", mode, "topic4 alpha")
    assert code == 0
    hits = json_lines(stdout)
    assert 1 <= len(hits) <= 3
    for hit in hits:
        assert set(hit) == HIT_KEYS
        assert hit["id"].startswith(hit["doc_id"] + "#") and isinstance(hit["score"], float)
        assert hit["title"] == f"Title {hit['doc_id'].split('-')[1]}" and hit["text"]
    if mode != "dense":
        assert hits[0]["id"] == "doc-4#0"


def test_search_reads_queries_from_stdin_and_prints_text(built: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("topic1\n\n   \ntopic2\n"))
    code, stdout, _ = run(capsys, "search", "--index", built, "--k", "1", "--mode", "sparse")
    assert code == 0
    assert [h["doc_id"] for h in json_lines(stdout)] == ["doc-1", "doc-2"]
    code, stdout, _ = run(capsys, "search", "--index", built, "--k", "1", "--mode", "sparse", "--format", "text", "topic6")
    assert code == 0 and "(doc-6#0)" in stdout and "Title 6" in stdout


def test_upsert_and_delete(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    update = tmp_path / "update.jsonl"
    update.write_text(json.dumps({"id": "doc-2", "title": "Two", "text": "flamingo replaces doc two"}) + "\n"
                      + json.dumps({"id": "new", "title": "New", "text": "a new heron document"}) + "\n")
    code, stdout, _ = run(capsys, "upsert", "--index", built, update, "--quiet")
    assert code == 0
    report = json.loads(stdout)
    assert report["documents_updated"] == 1 and report["documents_added"] == 1 and report["skipped"] == 0
    assert report["generation"] == 2 and report["passages_encoded"] == 2
    code, stdout, _ = run(capsys, "search", "--index", built, "--mode", "sparse", "flamingo")
    assert [h["id"] for h in json_lines(stdout)] == ["doc-2#0"]
    code, stdout, _ = run(capsys, "search", "--index", built, "--mode", "sparse", "topic2")
    assert json_lines(stdout) == []
    code, stdout, _ = run(capsys, "delete", "--index", built, "--doc-ids", "new", "doc-3")
    assert code == 0
    report = json.loads(stdout)
    assert report["documents_deleted"] == 2 and report["generation"] == 3
    for query in ("heron", "topic3"):
        code, stdout, _ = run(capsys, "search", "--index", built, "--mode", "hybrid", "--k", "20", query)
        assert code == 0 and not {"new", "doc-3"} & {h["doc_id"] for h in json_lines(stdout)}
    code, stdout, _ = run(capsys, "stats", "--index", built)
    assert json.loads(stdout)["documents"] == 9 and json.loads(stdout)["generation"] == 3


def test_an_index_built_with_a_relative_encoder_folder_opens_from_anywhere(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`--encoder runs/x/export/encoder`, as the README's tour has it: the index names the folder by its absolute path."""
    shutil.copytree(tiny_encoder_path, tmp_path / "runs" / "encoder")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "build", "--out", "idx", "--corpus", corpus, "--encoder", "runs/encoder", "--quiet")
    assert code == 0, err
    monkeypatch.chdir("/")
    code, stdout, err = run(capsys, "search", "--index", tmp_path / "idx", "--k", "1", "topic3")
    assert code == 0, err
    assert json_lines(stdout)[0]["doc_id"] == "doc-3"
    code, stdout, _ = run(capsys, "stats", "--index", tmp_path / "idx")
    assert json.loads(stdout)["encoder"] == str(tmp_path / "runs" / "encoder")
    # An index built before kept the path as given: it still opens (and takes updates) from where it was built.
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, "encoder": "runs/encoder"}))
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "upsert", "--index", "idx", write_jsonl(tmp_path / "new.jsonl", [Document("new", "N", "okapi")]))
    assert code == 0, err
    code, stdout, err = run(capsys, "search", "--index", "idx", "--k", "1", "--mode", "dense", "okapi")
    assert code == 0 and json_lines(stdout), err


def test_device_cpu_builds_on_the_cpu_when_cuda_is_present(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no GPU: a build that tried CUDA would fail, so success shows it stayed on the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", corpus,
                            "--encoder", tiny_encoder_path, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["passages_encoded"] == 10


def test_bfloat16_build_finds_what_a_float32_build_finds(tmp_path: Path, corpus: Path, built: Path,
                                                        tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "bf16", "--corpus", corpus, "--encoder", tiny_encoder_path,
                            "--encoder-dtype", "bfloat16", "--quiet")
    assert code == 0, err
    assert ("--encoder-dtype bfloat16: this CPU has neither avx512_bf16 nor AMX" in err) is (bf16_in_hardware("cpu") is False)
    for index in (built, tmp_path / "bf16"):
        code, stdout, _ = run(capsys, "search", "--index", index, "--mode", "dense", "--k", "1", "topic7 " + "hotel " * 5)
        assert json_lines(stdout)[0]["doc_id"] == "doc-7"
    # The index remembers its precision: updates and questions are encoded in it too.
    assert Index.open(tmp_path / "bf16", readonly=True).encoder.dtype == "bfloat16"
    assert Index.open(built, readonly=True).stats()["encoder_dtype"] == "float32"


def test_field_mapping(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "mapped.jsonl"
    corpus.write_text("".join(json.dumps({"docid": f"m{i}", "title": f"T{i}", "contents": f"mapped text word{i}", "year": i})
                              + "\n" for i in range(4)))
    out = tmp_path / "idx"
    code, stdout, err = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path,
                            "--quiet", "--fields", "id=docid,text=contents")
    assert code == 0, err
    assert json.loads(stdout)["documents_added"] == 4
    code, stdout, _ = run(capsys, "search", "--index", out, "--mode", "sparse", "word2")
    assert [(h["doc_id"], h["title"], h["text"]) for h in json_lines(stdout)] == [("m2", "T2", "mapped text word2")]
    with Index.open(out, readonly=True) as index:
        assert index.document("m3").meta == {"year": 3}


def test_dpr_tsv_corpus_builds(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "psgs_w100.tsv"
    corpus.write_text('id\ttext\ttitle\n1\t"Aaron is a ""prophet"" with a rod"\tAaron\n2\tZebras are striped equines\tZebra\n')
    out = tmp_path / "idx"
    code, stdout, err = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["documents_added"] == 2
    code, stdout, _ = run(capsys, "search", "--index", out, "--mode", "sparse", "prophet")
    hits = json_lines(stdout)
    assert [(h["id"], h["title"], h["text"]) for h in hits] == [("1#0", "Aaron", 'Aaron is a "prophet" with a rod')]


def test_no_sparse_index_searches_dense_only(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "idx"
    code, _, err = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet",
                       "--no-sparse")
    assert code == 0, err
    code, stdout, _ = run(capsys, "search", "--index", out, "--mode", "dense", "topic1")
    assert code == 0 and json_lines(stdout)
    code, plain, _ = run(capsys, "search", "--index", out, "topic1")  # no --mode: the index's own default, dense
    assert code == 0 and plain == stdout
    for mode in ("sparse", "hybrid"):
        code, stdout, err = run(capsys, "search", "--index", out, "--mode", mode, "topic1")
        assert code == 2 and stdout == ""
        assert "rag-index: error:" in err and "needs BM25" in err and "use mode dense" in err


# -- errors: exit 2, a message, nothing half-done --------------------------------------------------
def test_missing_corpus_file(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.jsonl"
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", missing, "--encoder", tiny_encoder_path,
                            "--quiet")
    assert code == 2 and stdout == ""
    assert "rag-index: error:" in err and str(missing) in err and "no such file" in err
    assert_no_index(tmp_path)


def malformed_corpus(tmp_path: Path) -> Path:
    lines = [json.dumps({"id": "a", "title": "A", "text": "first fine record"}),
             json.dumps({"id": "b", "title": "B", "text": "second fine record"}),
             '{"id": "c", "title": "C", "text": broken json',
             json.dumps({"id": "d", "title": "D", "text": "fourth fine record"})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_json_line_stops_the_build(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    bad = malformed_corpus(tmp_path)
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", bad, "--encoder", tiny_encoder_path,
                            "--quiet")
    assert code == 2 and stdout == ""
    assert f"{bad}:3" in err and "--on-error skip" in err
    assert_no_index(tmp_path)


def test_on_error_skip_skips_and_reports(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    bad = malformed_corpus(tmp_path)
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", bad, "--encoder", tiny_encoder_path,
                            "--quiet", "--on-error", "skip")
    assert code == 0
    report = json.loads(stdout)
    assert report["skipped"] == 1 and report["documents_added"] == 3
    assert f"{bad}:3" in err
    code, stdout, _ = run(capsys, "stats", "--index", tmp_path / "idx")
    assert json.loads(stdout)["documents"] == 3


def test_words_and_tokens_per_passage_together_are_refused(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    """Else --chunk-words is ignored without a word: the passages are cut by tokens."""
    code, _, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", corpus, "--encoder", tiny_encoder_path,
                       "--chunk-words", "5", "--chunk-tokens", "16", "--quiet")
    assert code == 2 and "give --chunk-words or --chunk-tokens, not both" in err
    assert_no_index(tmp_path)


@pytest.mark.parametrize("chunking", [["--chunk-words", "0"], ["--chunk-tokens", "16"]])
def test_an_overlap_that_would_be_ignored_is_refused(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                                     capsys: pytest.CaptureFixture, chunking: list[str]) -> None:
    code, _, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", corpus, "--encoder", tiny_encoder_path,
                       "--chunk-overlap", "5", *chunking, "--quiet")
    assert code == 2 and "an overlap of 5 words needs word chunking" in err
    assert_no_index(tmp_path)


def test_a_build_that_reads_no_document_warns(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": " "}\n')
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", bad, "--encoder", tiny_encoder_path,
                            "--on-error", "skip", "--quiet")
    assert code == 0 and json.loads(stdout)["skipped"] == 1
    assert "warning:" in err and "holds no documents" in err
    assert "Loading weights" not in err  # --quiet: no progress bar at all


def test_empty_text_stops_the_build(tmp_path: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "fine"}) + "\n" + json.dumps({"id": "b", "title": "B", "text": "  "}) + "\n")
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", corpus, "--encoder", tiny_encoder_path,
                            "--quiet")
    assert code == 2 and stdout == ""
    assert f"{corpus}:2" in err and "empty text" in err
    assert_no_index(tmp_path)


def test_duplicate_ids_across_files_stop_the_build(tmp_path: Path, tiny_encoder_path: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", make_documents(3))
    second = write_jsonl(tmp_path / "second.jsonl", make_documents(2, prefix="other") + make_documents(2)[1:])
    code, stdout, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", first, second, "--encoder",
                            tiny_encoder_path, "--quiet")
    assert code == 2 and stdout == ""
    assert "duplicate id 'doc-1'" in err and str(first) in err and str(second) in err
    assert_no_index(tmp_path)


def test_existing_out_is_refused_and_untouched(built: Path, corpus: Path, tiny_encoder_path: str,
                                               capsys: pytest.CaptureFixture) -> None:
    before = folder_state(built)
    code, stdout, err = run(capsys, "build", "--out", built, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet")
    assert code == 2 and stdout == "" and "already exists" in err
    assert folder_state(built) == before


def test_existing_empty_out_folder_is_refused(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "build", "--out", tmp_path / "empty", "--corpus", corpus, "--encoder", tiny_encoder_path,
                       "--quiet")
    assert code == 2 and "already exists" in err
    assert list((tmp_path / "empty").iterdir()) == []


def test_delete_of_an_unknown_id_changes_nothing(built: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "search", "--index", built, "topic1")  # let a reader leave whatever it leaves
    before = folder_state(built)
    code, stdout, err = run(capsys, "delete", "--index", built, "--doc-ids", "doc-1", "no-such-doc")
    assert code == 2 and stdout == ""
    assert "rag-index: error:" in err and "no-such-doc" in err
    code, stdout, _ = run(capsys, "stats", "--index", built)
    stats = json.loads(stdout)
    assert stats["generation"] == 1 and stats["documents"] == 10
    code, stdout, _ = run(capsys, "search", "--index", built, "--mode", "sparse", "topic1")
    assert [h["doc_id"] for h in json_lines(stdout)] == ["doc-1"]
    after = folder_state(built)
    assert after.get("manifest.json") == before.get("manifest.json")


def test_a_bad_upsert_file_changes_nothing(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = malformed_corpus(tmp_path)
    code, stdout, err = run(capsys, "upsert", "--index", built, bad, "--quiet")
    assert code == 2 and stdout == "" and f"{bad}:3" in err
    code, stdout, _ = run(capsys, "stats", "--index", built)
    assert json.loads(stdout)["generation"] == 1 and json.loads(stdout)["documents"] == 10
    code, stdout, _ = run(capsys, "search", "--index", built, "--mode", "sparse", "first fine record")
    assert json_lines(stdout) == []


@pytest.mark.parametrize("command", ["search", "stats", "upsert", "delete"])
def test_commands_on_a_folder_that_is_not_an_index(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture,
                                                   command: str) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    extra = {"search": ["topic1"], "stats": [], "upsert": [str(corpus), "--quiet"], "delete": ["--doc-ids", "doc-1"]}[command]
    code, stdout, err = run(capsys, command, "--index", plain, *extra)
    assert code == 2 and stdout == ""
    assert "rag-index: error:" in err and "not an index folder" in err
    assert list(plain.iterdir()) == []
    code, _, err = run(capsys, command, "--index", tmp_path / "missing", *extra)
    assert code == 2 and "no such index folder" in err and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("command", ["search", "stats", "upsert", "delete"])
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_commands_on_an_index_whose_store_is_damaged(built: Path, corpus: Path, capsys: pytest.CaptureFixture,
                                                     command: str, damage: str) -> None:
    store = built / "passages.sqlite"
    for leftover in built.glob("passages.sqlite*"):
        leftover.unlink()
    if damage == "garbage":
        store.write_bytes(b"not a database " * 100)
    extra = {"search": ["topic1"], "stats": [], "upsert": [str(corpus), "--quiet"], "delete": ["--doc-ids", "doc-1"]}[command]
    code, stdout, err = run(capsys, command, "--index", built, *extra)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert ("passages.sqlite is missing" if damage == "missing" else "not a readable index store") in err
    assert "rebuild the index" in err
    assert store.is_file() == (damage == "garbage")  # a writer did not start an empty store in its place


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU"), ("gpu0", "not a device torch knows")])
def test_a_device_this_machine_lacks_is_refused(tmp_path: Path, corpus: Path, tiny_encoder_path: str,
                                               capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                               device: str, message: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "build", "--out", tmp_path / "idx", "--corpus", corpus, "--encoder", tiny_encoder_path,
                       "--device", device, "--quiet")
    assert code == 2 and message in err
    assert_no_index(tmp_path)


def test_out_under_a_file_is_a_message(tmp_path: Path, corpus: Path, tiny_encoder_path: str, capsys: pytest.CaptureFixture) -> None:
    for out in (corpus / "idx", corpus / "sub" / "idx"):
        code, _, err = run(capsys, "build", "--out", out, "--corpus", corpus, "--encoder", tiny_encoder_path, "--quiet")
        # Named as the user wrote it, not by the staging folder beside it.
        assert code == 2 and f"{corpus} is a file, not a folder: choose another --out" in err and ".building-" not in err


def test_edit_commands_add_list_revoke_and_warn_of_an_unnamed_subject(built: Path, capsys: pytest.CaptureFixture) -> None:
    code, stdout, err = run(capsys, "edit", "add", "--index", built, "--fact", "The Eiffel Tower is in Rome.",
                            "--question", "Where is the Eiffel Tower?", "--answer", "Rome", "--subject", "Eiffel Tower")
    first = json.loads(stdout)
    assert code == 0 and "warning" not in err and first["id"] == "e1" and first["active"]
    # A subject the fact and the question both leave unnamed is kept as stated, with a warning on stderr.
    code, stdout, err = run(capsys, "edit", "add", "--index", built, "--fact", "The Louvre is in Lyon.", "--subject", "Louvr")
    second = json.loads(stdout)
    assert code == 0 and second["subject"] == "Louvr" and "warning: the subject 'Louvr' is named in neither" in err
    code, stdout, _ = run(capsys, "edit", "revoke", "--index", built, "e1")
    assert code == 0 and json.loads(stdout)["revoked_at"] is not None
    code, stdout, _ = run(capsys, "edit", "list", "--index", built)
    assert [e["id"] for e in json_lines(stdout)] == ["e2"]
    code, stdout, _ = run(capsys, "edit", "list", "--index", built, "--all")
    assert [e["id"] for e in json_lines(stdout)] == ["e1", "e2"]
    code, stdout, err = run(capsys, "edit", "add", "--index", built, "--fact", "Paris is in France.", "--answer", "France")
    assert code == 2 and stdout == "" and "needs its question" in err
    code, stdout, err = run(capsys, "edit", "revoke", "--index", built, "e1")
    assert code == 2 and "already revoked" in err
    # --supersedes replaces a named edit whatever it asks; history shows the chain, oldest first, from any link.
    code, stdout, _ = run(capsys, "edit", "add", "--index", built, "--fact", "The Louvre is in Nice.", "--subject", "Louvre",
                          "--supersedes", "e2")
    assert code == 0 and json.loads(stdout)["supersedes"] == "e2"
    code, stdout, _ = run(capsys, "edit", "list", "--index", built)
    assert [e["id"] for e in json_lines(stdout)] == ["e3"]
    code, stdout, _ = run(capsys, "edit", "history", "--index", built, "e2")
    assert code == 0 and [(e["id"], e["superseded_by"]) for e in json_lines(stdout)] == [("e2", "e3"), ("e3", None)]
    code, stdout, err = run(capsys, "edit", "history", "--index", built, "e9")
    assert code == 2 and stdout == "" and "no edit 'e9'" in err
    code, stdout, err = run(capsys, "edit", "add", "--index", built, "--fact", "X is in Y.", "--supersedes", "e2")
    assert code == 2 and stdout == "" and "edit e2 is no longer active (superseded by e3)" in err  # nothing added
    code, stdout, _ = run(capsys, "edit", "list", "--index", built, "--all")
    assert [e["id"] for e in json_lines(stdout)] == ["e1", "e2", "e3"]


def test_kill_during_a_build_leaves_no_staging_folder(tmp_path: Path, tiny_encoder_path: str) -> None:
    """SIGTERM (kill, timeout) cleans up as Ctrl-C does. The corpus is a pipe held open, so the build is
    caught mid-way, its staging folder made, for certain."""
    pipe = tmp_path / "corpus.jsonl"
    os.mkfifo(pipe)
    command = [sys.executable, "-c", "from indexer.cli import main; raise SystemExit(main())", "build", "--out",
               str(tmp_path / "idx"), "--corpus", str(pipe), "--encoder", tiny_encoder_path, "--quiet"]
    build = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    with open(pipe, "w") as corpus:
        corpus.write(json.dumps({"id": "a", "text": "a first document"}) + "\n")
        corpus.flush()
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.iterdir() if ".building-" in p.name]:
            assert time.monotonic() < deadline and build.poll() is None, "the build never started"
            time.sleep(0.1)
        build.send_signal(signal.SIGTERM)
        assert build.wait(60) == 130
    assert "interrupted; no index was made" in build.stderr.read()
    assert_no_index(tmp_path)


def test_a_read_only_index_folder_is_named_as_such(built: Path) -> None:
    """SQLite (in WAL mode) and tantivy write beside their files even to read, and an edit cannot go into a read-only
    log: these used to say "rebuild the index", or give a raw tantivy error or a traceback. Root ignores file permissions, so as root the commands run without
    that privilege (setpriv); as anyone else chmod is enough."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root, a read-only folder needs setpriv to drop the permission override")
        prefix = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    memory = Index.open_memory(built)
    memory.add("An edit made while the folder could be written.")
    memory.close()
    for path in [built, *built.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for argv, message in [(["stats", "--index", str(built)], "the folder is read-only"),
                              (["edit", "add", "--index", str(built), "--fact", "X is Y."], "the edit log is read-only")]:
            done = subprocess.run([*prefix, sys.executable, "-m", "indexer.cli", *argv], capture_output=True, text=True, env=env,
                                  timeout=120)
            assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    finally:
        for path in [built, *built.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
