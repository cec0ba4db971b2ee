"""A run's --out folder is left as it was found when the run does not finish, unless a checkpoint is worth keeping; Ctrl-C
ends a command with a line, not a traceback."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from rag import console_scripts
from rag.command_line import new_run_folder


@pytest.mark.parametrize("made_by_the_user", [False, True])
def test_an_unfinished_run_leaves_out_as_it_was(tmp_path: Path, made_by_the_user: bool) -> None:
    out = tmp_path / "runs" / "r1"
    if made_by_the_user:
        out.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt) as stopped, new_run_folder(out):
        (out / "metrics.jsonl").write_text("{}\n")
        raise KeyboardInterrupt
    assert out.is_dir() == made_by_the_user and not (out / "metrics.jsonl").exists()
    assert stopped.value.__notes__ == [f"the unfinished run's files are removed from {out}"]


def test_a_checkpoint_is_kept_with_what_it_is_good_for(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    with pytest.raises(ValueError) as failed, new_run_folder(out, keep="checkpoint", hint=": --init it"):
        (out / "checkpoint").mkdir()
        raise ValueError("out of disk")
    assert (out / "checkpoint").is_dir()
    assert failed.value.__notes__ == [f"the unfinished run's checkpoint is kept in {out / 'checkpoint'}: --init it"]


def test_a_finished_run_keeps_its_files(tmp_path: Path) -> None:
    with new_run_folder(tmp_path / "r1", keep="checkpoint") as out:
        (out / "model.safetensors").write_bytes(b"weights")
    assert (tmp_path / "r1" / "model.safetensors").read_bytes() == b"weights"


def test_ctrl_c_while_a_command_imports_prints_a_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """torch and transformers take seconds to import: a Ctrl-C then ends the command as it does later on."""
    def ctrl_c(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", ctrl_c)
    assert console_scripts.rag_train() == 130
    assert capsys.readouterr().err == "rag-train: interrupted\n"



def test_the_installed_commands_start() -> None:
    """The console scripts the install made (beside this Python) run their command lines."""
    names = ("rag-index", "rag-eval", "rag-train", "rag-serve")
    started = [subprocess.Popen([str(Path(sys.executable).parent / name), "--help"], stdout=subprocess.PIPE, text=True) for name in names]
    for name, process in zip(names, started):
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and out.startswith(f"usage: {name} ")
