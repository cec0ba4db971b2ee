"""bench/edit_baseline_cases.py scores the edit memory on exactly the weight-editing baseline's cases."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import common, edit_baseline_cases


def row(id: str, reliable: bool, general: list[bool], local: list[bool]) -> dict:
    return {"id": id, "reliable": reliable, "general": general, "local": local, "neighbor_names_edited_subject": [False] * len(local),
            "portable": None}


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, baseline_ids: list[str]) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        row("1", True, [True, False], [True]), row("2", False, [False], [False]), row("3", True, [True], [True, True])]))
    baseline = tmp_path / "weight_editing_x.json"
    baseline.write_text(json.dumps({"single": {"cases": [{"id": i} for i in baseline_ids]}}))
    out = tmp_path / "out.json"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)  # result files must live under it
    monkeypatch.setattr(sys, "argv", ["edit_baseline_cases.py", "--rows", str(rows), "--baseline", str(baseline), "--out", str(out)])
    edit_baseline_cases.main()
    return out


def test_only_the_baseline_cases_are_summarised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = json.loads(run(tmp_path, monkeypatch, ["3", "1"]).read_text())
    assert result["case_ids"] == ["3", "1"]
    summary = result["summary"]
    assert (summary["n"], summary["reliability"], summary["generality"], summary["locality"]) == (2, 1.0, 2 / 3, 1.0)
    assert "edit_latency_p50_ms" not in summary  # a run-wide figure, not the subset's
    assert result["command"].startswith("python edit_baseline_cases.py --rows")


def test_a_baseline_from_another_sample_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path, monkeypatch, ["1", "99"])
    assert "has no row for the baseline's cases ['99']" in str(stopped.value.code)
    assert not (tmp_path / "out.json").exists()
