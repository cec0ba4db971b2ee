"""bench/common.py records commands that can be rerun as typed, and which code ran."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pytest

from bench import common

SERVE_ARGV = ["bench/serve_load.py", "--clients", "16", "--server-args", "--reader SmolLM2-135M-Instruct"]


def test_the_recorded_command_splits_back_into_the_same_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", SERVE_ARGV)
    out = tmp_path / "result.json"
    common.write_result(out, {"x": 1}, {})
    assert shlex.split(json.loads(out.read_text())["command"]) == ["python", *SERVE_ARGV]  # pasted back, it runs


def test_a_subprocess_command_is_recorded_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    program = [sys.executable, "-c", "import json; print(json.dumps({'ok': 1}))"]
    summary, typed, _ = common.run_rag_eval(program, {}, program="python")
    assert summary == {"ok": 1}
    assert shlex.split(typed) == ["python", *program[1:]]
    # The settings the run was given come first, as a person would type them, whatever this process's own are.
    settings = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    program = [sys.executable, "-c", "import json, os; print(json.dumps({'threads': os.environ['OMP_NUM_THREADS']}))"]
    summary, typed, _ = common.run_rag_eval(program, settings, program="python")
    assert summary == {"threads": "1"}
    assert shlex.split(typed) == ["HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1", "python", *program[1:]]


def test_code_info_hashes_every_package_and_says_whether_the_tree_is_dirty() -> None:
    info = common.code_info()
    assert isinstance(info["git_dirty"], bool)
    assert info["git_dirty"] == bool(info["git_dirty_paths"])
    assert not any(path.startswith("bench/results/") for path in info["git_dirty_paths"])
    for package in ("indexer", "rag", "trainer", "serve"):
        assert len(info[f"{package}_sha1"]) == 40


DEFAULT_RESULT = common.RESULTS_DIR / "some_bench.json"


def limited_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def test_a_run_cut_short_by_limit_never_overwrites_the_default_result_file() -> None:
    parser = limited_parser()
    assert common.results_out(parser, parser.parse_args([]), DEFAULT_RESULT) == DEFAULT_RESULT.resolve()
    assert common.results_out(parser, parser.parse_args(["--limit", "20"]), DEFAULT_RESULT) == (common.RESULTS_DIR / "some_bench_limit20.json").resolve()
    chosen = common.RESULTS_DIR / "trial.json"
    assert common.results_out(parser, parser.parse_args(["--limit", "20", "--out", str(chosen)]), DEFAULT_RESULT) == chosen.resolve()


def test_a_result_file_named_with_out_is_the_one_written_even_when_it_is_the_default() -> None:
    parser = limited_parser()
    named = parser.parse_args(["--limit", "20", "--out", str(DEFAULT_RESULT)])
    assert common.results_out(parser, named, DEFAULT_RESULT) == DEFAULT_RESULT.resolve()


def test_a_result_file_outside_bench_results_is_refused(tmp_path: Path) -> None:
    parser = limited_parser()
    with pytest.raises(SystemExit, match="must be under"):
        common.results_out(parser, parser.parse_args(["--out", str(tmp_path / "x.json")]), DEFAULT_RESULT)
