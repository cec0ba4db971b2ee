"""Benches that add runs to one result file key them by what changes their figures and stamp each with its invocation."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import common, fewshot, knowledge_edits, reader_quality

OLD_SETTINGS = {"tasks": ["sst2"], "methods": ["prompt"], "shots": 32, "seed": 0, "limit": 40, "steps": 24, "batch_size": 4,
                "max_prompt_tokens": 1024, "threads": 1, "work": None, "out": "bench/results/fewshot.json"}


def fake_runs(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[list[str]]:
    """Replace the subprocesses and machine probe of `module`; returns the commands it runs."""
    ran: list[list[str]] = []

    def run(command: list[str], env: dict[str, str], program: str = "rag-eval") -> tuple[dict[str, Any], str, float]:
        ran.append(command)
        summary = {"n": 40, "accuracy": 0.5, "ms_per_example": 1.0, "tokens_per_example": 1.0, "em": 0.5, "f1": 0.5,
                   "latency_p50_ms": 1.0, "scope": "auto", "edits_in_memory": 1, "reliability": 1.0, "generality": 1.0,
                   "locality": 1.0, "portability": None, "edit_latency_p50_ms": 1.0, "edit_latency_p99_ms": 1.0}
        return summary, " ".join([program, *command[1:]]), 0.1

    monkeypatch.setattr(module, "run_rag_eval", run)
    monkeypatch.setattr(module, "machine_info", lambda: {"cpu_count": 2})
    return ran


def test_old_fewshot_keys_take_the_settings_recorded_in_the_file() -> None:
    old = {"runs": {"sst2 zero-shot": {"summary": {}}, "sst2 lora train": {"summary": {}}, "nq-open lora+query": {"summary": {}}},
           "settings": OLD_SETTINGS, "machine": {"cpu_count": 2}}
    upgraded = fewshot.upgrade(old)
    assert list(upgraded["runs"]) == ["sst2 zero-shot (limit=40)", "sst2 lora train (shots=32 seed=0 steps=24 batch_size=4)",
                                      "nq-open lora+query (limit=40 shots=64 seed=0 steps=24 batch_size=4)"]
    assert upgraded["before_per_run_records"] == {"settings": OLD_SETTINGS, "machine": {"cpu_count": 2}}


def test_fewshot_reruns_only_what_another_seed_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fewshot.json"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)  # result files must live under it
    done = {"command": "rag-eval fewshot --task sst2", "summary": {"n": 40, "accuracy": 0.4, "ms_per_example": 1.0, "tokens_per_example": 1.0}}
    out.write_text(json.dumps({"runs": {"sst2 zero-shot": done, "sst2 icl": done}, "settings": OLD_SETTINGS, "machine": {}}))
    ran = fake_runs(monkeypatch, fewshot)
    monkeypatch.setattr(sys, "argv", ["fewshot.py", "--tasks", "sst2", "--methods", "lora", "--seed", "1", "--limit", "40",
                                      "--work", str(tmp_path), "--out", str(out)])
    fewshot.main()
    assert [command[1] for command in ran] == ["fewshot"] * 3  # icl, training and the adapter's evaluation; zero-shot is kept
    runs = json.loads(out.read_text())["runs"]
    assert "sst2 icl (limit=40 shots=32 seed=0 max_prompt_tokens=1024)" in runs
    new = runs["sst2 icl (limit=40 shots=32 seed=1 max_prompt_tokens=1024)"]
    assert new["bench_command"].endswith(f"--out {out}") and new["timestamp"] and new["machine"] == {"cpu_count": 2}


@pytest.mark.parametrize("module, argv", [
    (reader_quality, ["reader_quality.py", "--configs", "span", "--sets", "squad-open-dev"]),
    (knowledge_edits, ["knowledge_edits.py", "--runs", "counterfact-1000"])])
def test_each_run_keeps_its_own_invocation(module: Any, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "result.json"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)  # result files must live under it
    fake_runs(monkeypatch, module)
    if module is knowledge_edits:
        monkeypatch.setattr(module, "classifier_info", lambda: {})
        monkeypatch.setattr(module, "two_hop_info", lambda: {})
    predictions = ["--predictions", str(tmp_path)] if module is knowledge_edits else []
    monkeypatch.setattr(sys, "argv", [*argv, *predictions, "--out", str(out), "--threads", "1"])
    module.main()
    first = json.loads(out.read_text())["runs"]
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--threads", "2"])
    module.main()
    (key, run), = json.loads(out.read_text())["runs"].items()
    assert run["bench_command"].endswith("--threads 2") and first[key]["bench_command"].endswith("--threads 1")
    assert run["timestamp"] and run["machine"] == {"cpu_count": 2}


def test_a_trial_limit_writes_beside_the_committed_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """reader_quality.py with another --limit and no --out: the committed 500-question figures stay as they are."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(reader_quality, "RESULTS_DIR", tmp_path)
    fake_runs(monkeypatch, reader_quality)
    monkeypatch.setattr(sys, "argv", ["reader_quality.py", "--configs", "span", "--sets", "squad-open-dev", "--limit", "3"])
    reader_quality.main()
    assert [p.name for p in tmp_path.iterdir()] == ["reader_quality_limit3.json"]
    monkeypatch.setattr(sys, "argv", ["reader_quality.py", "--configs", "span", "--out", "/tmp/elsewhere.json"])
    with pytest.raises(SystemExit, match="--out must be under"):
        reader_quality.main()
