"""A run's --out folder is left as it was found when the run does not finish, unless a checkpoint is worth keeping; Ctrl-C
ends a command with a line, not a traceback."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rag import console_scripts
from rag.command_line import new_run_folder, resumed_run_folder, run_lock


@pytest.mark.parametrize("made_by_the_user", [False, True])
def test_an_unfinished_run_leaves_out_as_it_was(tmp_path: Path, made_by_the_user: bool) -> None:
    out = tmp_path / "runs" / "r1"
    if made_by_the_user:
        out.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt) as stopped, new_run_folder(out):
        (out / "metrics.jsonl").write_text("{}\n")
        raise KeyboardInterrupt
    # The folders the run made go too (runs/ as well as runs/r1), those it found stay (emptied).
    assert out.is_dir() == (tmp_path / "runs").is_dir() == made_by_the_user and not (out / "metrics.jsonl").exists()
    assert stopped.value.__notes__ == [f"the unfinished run's files are removed from {out}"]


def test_a_folder_a_run_is_writing_is_refused_to_another(tmp_path: Path) -> None:
    with new_run_folder(tmp_path / "r1") as run:
        with pytest.raises(ValueError, match="is not empty"), new_run_folder(tmp_path / "r1"):
            pass
        (run.path / "model.safetensors").write_bytes(b"weights")
    assert [p.name for p in (tmp_path / "r1").iterdir()] == ["model.safetensors"]  # what marked it taken is gone


def test_the_marker_of_a_run_killed_outright_does_not_block_the_same_command(tmp_path: Path) -> None:
    """SIGKILL leaves OUT/.running, unlocked, and nothing else: the folder counts as empty. A locked one does not."""
    out = tmp_path / "r1"
    out.mkdir()
    (out / ".running").write_text("")  # what `kill -9` leaves
    with new_run_folder(out) as run:
        (run.path / "model.safetensors").write_bytes(b"weights")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    (tmp_path / "r2").mkdir()
    with run_lock(tmp_path / "r2"), pytest.raises(ValueError, match="is not empty"), new_run_folder(tmp_path / "r2"):
        pass


def test_a_kept_note_may_depend_on_what_ended_the_run(tmp_path: Path) -> None:
    def kept(exc: BaseException) -> str:
        return "kept: start afresh" if isinstance(exc, ArithmeticError) else "kept: resume"

    for error, note in ((ArithmeticError, "kept: start afresh"), (KeyboardInterrupt, "kept: resume")):
        out = tmp_path / error.__name__
        with pytest.raises(error) as stopped, new_run_folder(out, keep="ckpt", kept=kept):
            (out / "ckpt").write_text("{}")
            raise error
        assert stopped.value.__notes__ == [note]


def test_a_clean_up_that_fails_keeps_the_runs_own_error(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    with pytest.raises(KeyboardInterrupt) as stopped, new_run_folder(out):
        shutil.rmtree(out)  # gone under the run (a removed disk)
        raise KeyboardInterrupt
    assert stopped.value.__notes__[0].startswith(f"the unfinished run's files could not all be removed from {out}: ")


def test_a_link_to_nothing_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a link to .*nowhere, which does not exist"), new_run_folder(tmp_path / "out"):
        pass


def test_a_whole_checkpoint_is_kept_with_what_it_is_good_for(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    with pytest.raises(KeyboardInterrupt), new_run_folder(out, keep="checkpoint/step.json", kept="kept: --init it"):
        (out / "checkpoint").mkdir()  # stopped while the first checkpoint was written: not whole, not kept
        raise KeyboardInterrupt
    assert not out.exists()
    with pytest.raises(ValueError) as failed, new_run_folder(out, keep="checkpoint/step.json", kept="kept: --init it"):
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / "step.json").write_text("{}")
        raise ValueError("out of disk")
    assert (out / "checkpoint" / "step.json").is_file() and failed.value.__notes__ == ["kept: --init it"]


def test_a_saved_model_stays_whatever_fails_after_it(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    with pytest.raises(KeyboardInterrupt) as stopped, new_run_folder(out) as run:
        (out / "model.safetensors").write_bytes(b"weights")
        run.saved = True
        raise KeyboardInterrupt  # in the dev evaluation that follows
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert stopped.value.__notes__ == [f"the run's model is saved in {out}; what the run writes after it is missing"]


def test_a_linked_out_folder_is_emptied_not_removed(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "disk")
    with pytest.raises(KeyboardInterrupt) as stopped, new_run_folder(tmp_path / "out"):
        (tmp_path / "out" / "metrics.jsonl").write_text("{}\n")
        (tmp_path / "out" / "checkpoint").mkdir()
        raise KeyboardInterrupt
    assert (tmp_path / "out").is_symlink() and list((tmp_path / "disk").iterdir()) == []
    assert stopped.value.__notes__ == [f"the unfinished run's files are removed from {tmp_path / 'out'}"]


def test_a_new_folder_another_run_made_meanwhile_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs given the same new --out: the second to make it stops there, and never removes the first one's files."""
    out = tmp_path / "runs" / "r1"
    mkdir = Path.mkdir

    def the_other_run_makes_it_meanwhile(self: Path, *args: object, **kwargs: object) -> None:
        mkdir(self, *args, **kwargs)
        if self == out.parent and not out.exists():  # after this run looked, before it made --out
            mkdir(out)
            (out / "metrics.jsonl").write_text("the other run's\n")

    monkeypatch.setattr(Path, "mkdir", the_other_run_makes_it_meanwhile)
    with pytest.raises(ValueError, match="was taken by another run meanwhile"), new_run_folder(out):
        pass
    assert (out / "metrics.jsonl").read_text() == "the other run's\n"


def test_a_folder_a_run_holds_is_refused_to_a_resumed_run_too(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        with pytest.raises(ValueError, match=f"another run is writing in {tmp_path}"), resumed_run_folder(tmp_path, "kept"):
            pass
    (tmp_path / ".running").write_text("")  # left by a run killed outright: it holds nothing
    with pytest.raises(KeyboardInterrupt) as stopped, resumed_run_folder(tmp_path, "the last checkpoint is kept"):
        raise KeyboardInterrupt
    assert stopped.value.__notes__ == ["the last checkpoint is kept"] and not (tmp_path / ".running").exists()


def test_ctrl_c_while_a_command_imports_prints_a_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """torch and transformers take seconds to import: a Ctrl-C then ends the command as it does later on."""
    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", ctrl_c)
    assert console_scripts.rag_train() == 130
    assert capsys.readouterr().err == "rag-train: interrupted\n"
    # Or while the command line, imported, imports its subcommands' modules before run_command is reached.
    monkeypatch.setattr(importlib, "import_module", lambda name: types.SimpleNamespace(main_train=ctrl_c))
    assert console_scripts.rag_train() == 130
    assert capsys.readouterr().err == "rag-train: interrupted\n"



def test_the_installed_commands_start() -> None:
    """The console scripts the install made (beside this Python) run their command lines."""
    names = ("rag-index", "rag-eval", "rag-train", "rag-serve")
    started = [subprocess.Popen([str(Path(sys.executable).parent / name), "--help"], stdout=subprocess.PIPE, text=True) for name in names]
    for name, process in zip(names, started):
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and out.startswith(f"usage: {name} ")


@pytest.mark.parametrize("cpu, native", [("x86_64", False), ("x86_64", True), ("aarch64", False)])
def test_bf16_on_a_cpu_that_only_emulates_it_is_warned_of(cpu: str, native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Emulated bfloat16 runs several times slower than float32: --bf16 says so before the run, whatever it then does.
    Only where torch's probes can tell: they name x86 features, which an ARM CPU with bfloat16 lacks."""
    from indexer import encoder
    from trainer.cli import main_train

    monkeypatch.setattr(encoder.platform, "machine", lambda: cpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)  # the CPU's answer, either way
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    argv = ["span-reader", "--data", str(tmp_path / "none.jsonl.gz"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main_train([*argv, "--bf16"]) == 2  # no such data file: the run itself is refused
    err = capsys.readouterr().err
    assert ("rag-train: warning: --bf16: this CPU has neither avx512_bf16 nor AMX" in err) is (cpu == "x86_64" and not native)
    assert "rag-train: error:" in err
    assert main_train(argv) == 2
    assert "warning" not in capsys.readouterr().err
