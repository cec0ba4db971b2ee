"""bench/joint_training.py refuses to resume a run with settings other than the ones it was started with."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.joint_training import check_resumable

SETTINGS = dict(top_k=4, candidates=16, reader_first=0, steps=100, batch_size=8, max_passage_tokens=96,
                retriever_lr=2e-5, bf16=False, device="cpu")


def saved_run(folder: Path, refresh: str) -> Path:
    (folder / "config.json").write_text(json.dumps({**SETTINGS, "refresh": refresh, "query_side_only": refresh == "none"}))
    return folder


@pytest.mark.parametrize("saved, asked", [("none", None), ("rerank:64", "rerank:64")])
def test_same_settings_resume(tmp_path: Path, saved: str, asked: str | None) -> None:
    check_resumable(saved_run(tmp_path, saved), argparse.Namespace(**SETTINGS, refresh=asked))


@pytest.mark.parametrize("saved, asked", [("none", "rerank:64"), ("rerank:64", None), ("every:50", "rerank:64")])
def test_another_refresh_is_refused(tmp_path: Path, saved: str, asked: str | None) -> None:
    with pytest.raises(SystemExit, match=f"--refresh {saved} there, {asked or 'none'} here"):
        check_resumable(saved_run(tmp_path, saved), argparse.Namespace(**SETTINGS, refresh=asked))


def test_another_step_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--steps 100 there, 200 here"):
        check_resumable(saved_run(tmp_path, "none"), argparse.Namespace(**{**SETTINGS, "steps": 200}, refresh=None))
