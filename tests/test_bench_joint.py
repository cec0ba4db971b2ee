"""bench/joint_training.py refuses to resume a run with settings other than its own, and completes finished runs cheaply."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest

from bench.joint_training import check_resumable, trained_index
from indexer.index import Index
from rag.retriever import DualEncoder

SETTINGS = dict(top_k=4, candidates=16, candidates_from="dense", in_batch_negatives=False, reader_first=0, steps=100, batch_size=8, max_passage_tokens=96,
                retriever_lr=2e-5, bf16=False, device="cpu", held_out_share=0.1)


def saved_run(folder: Path, refresh: str | None, adapter: str | None = None) -> Path:
    """A run's config.json as rag-train joint saves it: refresh None is a query-side run (saved as refresh "none")."""
    config = {**SETTINGS, "refresh": refresh or "none", "query_side_only": refresh is None, "adapter": adapter}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def asked(refresh: str | None, adapter: str | None = None, **changes: object) -> argparse.Namespace:
    """The bench's arguments: --refresh None trains the query side only."""
    return argparse.Namespace(**{**SETTINGS, **changes}, refresh=refresh, adapter=adapter)


@pytest.mark.parametrize("refresh", [None, "none", "rerank:64"])
def test_same_settings_resume(tmp_path: Path, refresh: str | None) -> None:
    check_resumable(saved_run(tmp_path, refresh, "runs/reader"), asked(refresh, "runs/reader"))


def test_an_adapter_saved_absolute_matches_the_same_one_given_relative(tmp_path: Path) -> None:
    """rag-train joint saves paths absolute; the bench is given them relative to the repository, where it runs."""
    check_resumable(saved_run(tmp_path, None, str(Path("runs/reader").resolve())), asked(None, "runs/reader"))


@pytest.mark.parametrize("saved, wanted, message", [
    (None, "rerank:64", "--query-side-only there, --refresh rerank:64 here"),
    (None, "none", "--query-side-only there, --refresh none here"),
    ("none", None, "--refresh none there, --query-side-only here"),
    ("every:50", "rerank:64", "--refresh every:50 there, --refresh rerank:64 here")])
def test_another_refresh_is_refused(tmp_path: Path, saved: str | None, wanted: str | None, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        check_resumable(saved_run(tmp_path, saved), asked(wanted))


def test_another_step_count_or_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--steps 100 there, 200 here"):
        check_resumable(saved_run(tmp_path, None), asked(None, steps=200))
    with pytest.raises(SystemExit, match="--adapter None there, runs/reader here"):
        check_resumable(saved_run(tmp_path, None), asked(None, "runs/reader"))


@pytest.mark.parametrize("option, wanted, message", [
    ("candidates_from", "hybrid", "--candidates-from dense there, hybrid here"),
    ("in_batch_negatives", True, "--in-batch-negatives False there, True here")])
def test_older_runs_count_as_the_options_defaults(tmp_path: Path, option: str, wanted: object, message: str) -> None:
    """A run saved before an option existed ran as its default (dense candidates, each question's own only): it resumes
    as such and not with the option on."""
    folder = saved_run(tmp_path, None)
    config = json.loads((folder / "config.json").read_text())
    del config[option]
    (folder / "config.json").write_text(json.dumps(config))
    check_resumable(folder, asked(None))
    with pytest.raises(SystemExit, match=message):
        check_resumable(folder, asked(None, **{option: wanted}))


def test_a_run_from_before_held_out_articles_is_not_resumed_with_them(tmp_path: Path) -> None:
    """A run started before --held-out-share trained on every article: resuming it with a share would mix the two."""
    config = json.loads((saved_run(tmp_path, "none")).joinpath("config.json").read_text())
    del config["held_out_share"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="--held-out-share 0.0 there, 0.1 here"):
        check_resumable(tmp_path, asked("none"))
    check_resumable(tmp_path, asked("none", held_out_share=0.0))


def test_a_re_embedded_corpus_is_reused_until_the_export_changes(topic_index: Path, tiny_encoder_path: str, tmp_path: Path) -> None:
    """Rerunning the bench to add figures to a finished run reuses its re-embedded corpus, unless the export is newer."""
    index, exported = Index.open(topic_index, readonly=True), tmp_path / "export" / "encoder"
    shutil.copytree(tiny_encoder_path, exported)
    encoder = DualEncoder(str(exported))
    first = trained_index(index, tmp_path, encoder)
    vectors = tmp_path / "evaluation-index" / "dense-1-0of1.faiss"
    assert first.generation == 1 and vectors.is_file()
    os.utime(vectors, (1e9, 1e9))  # older than the export: a new export since, so re-embed
    again = trained_index(index, tmp_path, encoder)
    assert again.generation == 1 and vectors.stat().st_mtime > 1e9
    for f in exported.rglob("*"):
        os.utime(f, (1e9, 1e9))
    stamp = vectors.stat().st_mtime
    reused = trained_index(index, tmp_path, encoder)
    assert reused.generation == 1 and vectors.stat().st_mtime == stamp


@pytest.mark.parametrize("extra, refused", [
    ([], None),  # the same settings: a rerun adds what the file lacks
    (["--losses", "emdr2"], None),  # another loss at the same settings too
    (["--steps", "3"], "holds figures made with --steps 1: pass the same to complete it, or another --out"),
    (["--top-k", "2", "--max-passage-tokens", "48"], "holds figures made with --top-k 3, --max-passage-tokens 32"),
    (["--adapter", "runs/teacher"], "holds figures made with --adapter None"),
])
def test_a_result_file_is_completed_only_with_the_settings_it_was_made_with(extra: list[str], refused: str | None, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import bench.common
    import bench.joint_training

    out = tmp_path / "joint.json"
    made = ["--steps", "1", "--top-k", "3", "--max-passage-tokens", "32", "--held-out-share", "0", "--out", str(out)]
    scale = {"steps": 1, "batch_size": 8, "top_k": 3, "candidates": 0, "candidates_from": "dense", "in_batch_negatives": False,
             "reader_first": 0, "adapter": None, "max_passage_tokens": 32, "retriever_lr": 2e-5, "limit": 500, "em_limit": 100,
             "bf16": False, "device": "cpu", "refresh": None, "held_out_share": 0.0}
    out.write_text(json.dumps({"scale": scale, "before": {}, "runs": {"pdist": {"command": "rag-train joint ..."}}}))
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)

    class Reached(Exception):
        """The settings were taken: the bench went on to open the index."""

    def reached(*_args: object, **_kwargs: object) -> None:
        raise Reached

    monkeypatch.setattr(bench.joint_training.Index, "open", reached)
    monkeypatch.setattr(sys, "argv", ["joint_training.py", *made, *extra])
    if refused is None:
        with pytest.raises(Reached):
            bench.joint_training.main()
    else:
        with pytest.raises(SystemExit, match=refused):
            bench.joint_training.main()
        assert json.loads(out.read_text())["scale"] == scale  # the file as it was
