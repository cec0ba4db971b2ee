"""bench/retriever_ceiling.py checks its settings against the index before anything slow starts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import retriever_ceiling
from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import build_index


def test_hybrid_candidates_need_a_sparse_part(tmp_path: Path, tiny_encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dense_only = tmp_path / "dense-only"
    build_index(dense_only, make_documents(6), tiny_encoder, sparse=False)
    monkeypatch.setattr(sys, "argv", ["retriever_ceiling.py", "--index", str(dense_only), "--candidates-from", "hybrid"])
    with pytest.raises(SystemExit) as stopped:
        retriever_ceiling.main()
    assert stopped.value.code == 2
    assert "has no sparse part (built with --no-sparse)" in capsys.readouterr().err
