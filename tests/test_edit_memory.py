"""The edit memory: an append-only log of edits with revocation, replacement, search, durability and crash safety."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import unicodedata
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import make_documents
from indexer.edit_memory import EDITS_FILE, EditMemory, EditNotFound
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from indexer.manifest import IndexFolderError
from rag.pipeline import check_request

DIM = 32  # the tiny encoder's (tests/conftest.py)


@pytest.fixture()
def memory(tmp_path: Path, tiny_encoder: TextEncoder) -> EditMemory:
    return EditMemory(tmp_path / "memory", tiny_encoder, DIM)


def test_add_is_searchable_at_once_and_persists(memory: EditMemory, tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    edit = memory.add("The Eiffel Tower is in Rome.", question="Where is the Eiffel Tower?", answer="Rome", subject="Eiffel Tower")
    assert edit.id == "e1" and edit.active and edit.created_at.endswith("+00:00")
    other = memory.add("Water boils at 90 degrees.")
    [[(found, score)]] = memory.search(tiny_encoder(["Where is the Eiffel Tower?"]), k=1)
    assert found == edit and score == pytest.approx(1.0)
    assert [e.id for e, _ in memory.search(tiny_encoder(["Water boils at 90 degrees."]), k=2)[0]][0] == other.id
    memory.close()
    again = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert again.list() == [edit, other] and len(again) == 2 and again.get("e1") == edit


def test_revoke_and_supersede_keep_the_history(memory: EditMemory, tiny_encoder: TextEncoder) -> None:
    first = memory.add("Rome is the capital of Italy.", question="What is the capital of Italy?", answer="Rome")
    # Same question up to case and punctuation: the new edit replaces the old one by itself.
    second = memory.add("Milan is the capital of Italy.", question="what is the capital of italy", answer="Milan")
    assert second.supersedes == first.id and memory.get(first.id).superseded_by == second.id
    assert [e.id for e in memory.list()] == [second.id]
    hits = memory.search(tiny_encoder(["What is the capital of Italy?"]), k=5)[0]
    assert [e.id for e, _ in hits] == [second.id]  # the replaced edit is no longer searched
    # Revoking the replacement brings the replaced edit back.
    revoked = memory.revoke(second.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert [e.id for e in memory.list()] == [first.id] and memory.get(first.id).active
    third = memory.add("Turin is the capital of Italy.", supersedes=first.id)
    assert [e.id for e in memory.history(third.id)] == [first.id, second.id, third.id]
    assert [e.id for e in memory.list(include_inactive=True)] == [first.id, second.id, third.id]
    assert [e.id for e in memory.list()] == [third.id]
    memory.revoke(third.id)
    memory.revoke(first.id)
    assert memory.list() == [] and len(memory) == 0 and memory.search(tiny_encoder(["x"]), k=3) == [[]]


def test_revoking_an_edit_already_replaced_by_question_keeps_what_it_had_replaced_replaced(memory: EditMemory,
                                                                                            tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """e3 names e0 to supersede and asks e2's question, so it replaces both; e2 had replaced e1. Revoking e2 later must
    not bring e1 back beside e3: e3 took e2's place in e1's chain, as if it had named e2."""
    e1 = memory.add("Rome is the capital of Italy.")
    e2 = memory.add("Milan is the capital of Italy.", question="What is the capital of Italy?", answer="Milan", supersedes=e1.id)
    e0 = memory.add("Paris is the capital of France.", question="What is the capital of France?", answer="Paris")
    e3 = memory.add("Turin is the capital of Italy.", question="What is the capital of Italy?", answer="Turin", supersedes=e0.id)
    assert [e.id for e in memory.list()] == [e3.id]
    memory.revoke(e2.id)
    assert [e.id for e in memory.list()] == [e3.id]
    memory.close()  # and read afresh from the log, as another process reads it
    again = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert [e.id for e in again.list()] == [e3.id] and again.get(e1.id).superseded_by == e3.id


def test_an_edit_made_after_a_revoke_does_not_replace_what_the_revoked_one_had(memory: EditMemory, tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """e2 superseded e1 and was revoked, bringing e1 back; e3, made later with e2's question, replaces nothing (no active
    edit asks it), so e1 stays active beside it, in this memory and in the log read afresh."""
    e1 = memory.add("Rome is the capital of Italy.")
    e2 = memory.add("Milan is the capital of Italy.", question="What is the capital of Italy?", answer="Milan", supersedes=e1.id)
    memory.revoke(e2.id)
    e3 = memory.add("Turin is the capital of Italy.", question="What is the capital of Italy?", answer="Turin")
    assert e3.supersedes is None and [e.id for e in memory.list()] == [e1.id, e3.id]
    memory.close()
    again = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert [e.id for e in again.list()] == [e1.id, e3.id]


def test_which_edits_came_before_a_revoke_does_not_hang_on_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_encoder: TextEncoder) -> None:
    """A clock that stands still (or steps back) cannot order a revoke among the edits: the log keeps the order itself.
    e3 replaced e2 by its question before e2's revoke, so e1 (which e2 had superseded) stays replaced; e4, made after
    e5's revoke, replaced nothing, so e5's own predecessor comes back."""
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    memory = EditMemory(tmp_path / "memory", tiny_encoder, DIM)
    e1 = memory.add("Rome is the capital of Italy.")
    e2 = memory.add("Milan is the capital of Italy.", question="What is the capital of Italy?", supersedes=e1.id)
    e0 = memory.add("Paris is the capital of France.", question="What is the capital of France?")
    e3 = memory.add("Turin is the capital of Italy.", question="What is the capital of Italy?", supersedes=e0.id)
    memory.revoke(e2.id)
    f1 = memory.add("Bern is the capital of Switzerland.")
    f2 = memory.add("Zurich is the capital of Switzerland.", question="What is the capital of Switzerland?", supersedes=f1.id)
    memory.revoke(f2.id)
    f3 = memory.add("Geneva is the capital of Switzerland.", question="What is the capital of Switzerland?")
    expected = [e3.id, f1.id, f3.id]
    assert [e.id for e in memory.list()] == expected
    memory.close()
    assert [e.id for e in EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True).list()] == expected


@pytest.mark.parametrize("revoked", ["before e3", "after e3"])
def test_a_log_from_before_revokes_kept_their_place_is_read_by_their_times_and_upgraded(tmp_path: Path, revoked: str, tiny_encoder: TextEncoder) -> None:
    """Logs written before `last_edit` was kept: their revokes are ordered by the clock. e2 superseded e1; e3 names e0
    and asks e2's question, so the log links it to e0 alone. Revoked after e3 was made, e2 passes e3 on to e1;
    revoked before, e3 replaced nothing of e2's and e1 is back. A read-only opener reads such a log as it is; a writer
    adds the column, and later revokes record it."""
    memory = EditMemory(tmp_path / "memory", tiny_encoder, DIM)
    e1 = memory.add("Rome is the capital of Italy.")
    e2 = memory.add("Milan is the capital of Italy.", question="What is the capital of Italy?", supersedes=e1.id)
    e0 = memory.add("Paris is the capital of France.", question="What is the capital of France?")
    e3 = memory.add("Turin is the capital of Italy.", question="What is the capital of Italy?", supersedes=e0.id)
    memory.close()
    made = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    when = made.get(e3.id).created_at
    made.close()
    at = datetime.fromisoformat(when).timestamp() + (1.0 if revoked == "after e3" else -1.0)
    db = sqlite3.connect(tmp_path / "memory" / EDITS_FILE)
    db.executescript("DROP TABLE revocations; CREATE TABLE revocations (edit_row INTEGER PRIMARY KEY REFERENCES edits(row), "
                     f"revoked_at REAL NOT NULL); INSERT INTO revocations VALUES ({int(e2.id[1:])}, {at});")
    db.close()
    expected = [e3.id] if revoked == "after e3" else [e1.id, e3.id]
    assert [e.id for e in EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True).list()] == expected
    writer = EditMemory(tmp_path / "memory", tiny_encoder, DIM)
    assert [e.id for e in writer.list()] == expected
    writer.revoke(e3.id)
    columns = [row[1] for row in sqlite3.connect(tmp_path / "memory" / EDITS_FILE).execute("PRAGMA table_info(revocations)")]
    assert "last_edit" in columns and writer.get(e2.id).revoked_at is not None


def test_a_revoke_whose_reread_fails_is_read_again_by_the_next_call(memory: EditMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The revoke is committed before the log is read back: if that read fails, the next call must not serve the
    edit as active from the state before (this connection's own commit does not change SQLite's data_version)."""
    edit = memory.add("Rome is the capital of Italy.", question="What is the capital of Italy?", answer="Rome")
    read = EditMemory._read

    def failing(self, db):  # the read back after the commit fails once, as an SQLITE_BUSY timeout would
        monkeypatch.setattr(EditMemory, "_read", read)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(EditMemory, "_read", failing)
    with pytest.raises(sqlite3.OperationalError):
        memory.revoke(edit.id)
    assert not memory.get(edit.id).active and memory.list() == []


def test_bad_edits_are_refused_and_change_nothing(memory: EditMemory, tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    memory.add("A fact.", question="Q?")
    for kwargs, message in [
        (dict(fact="  "), "fact must be a non-empty string"),
        (dict(fact="\x00"), "fact must be a non-empty string"),
        (dict(fact="x", answer="A"), "needs its question"),
        (dict(fact="x" * 2001), "limit is 2000"),
        (dict(fact="x", question=3), "question must be a non-empty string"),
        (dict(fact="x", supersedes="e9"), "no edit 'e9'"),
        (dict(fact="x", supersedes="nope"), "edit ids look like e1"),
    ]:
        with pytest.raises((ValueError, EditNotFound), match=message):
            memory.add(**kwargs)
    memory.revoke("e1")
    with pytest.raises(ValueError, match="already revoked"):
        memory.revoke("e1")
    with pytest.raises(ValueError, match="no longer active"):
        memory.add("y", supersedes="e1")
    with pytest.raises(EditNotFound):
        memory.get("e2")
    assert len(memory.list(include_inactive=True)) == 1
    with pytest.raises(PermissionError):
        EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True).add("z")


def test_an_error_after_sqlite_ended_the_transaction_itself_is_the_one_reported(
    memory: EditMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite rolls a transaction back by itself on some errors (a full disk): the caller must see that error, not
    "no transaction is active" from a second ROLLBACK, and the memory must take the next edit."""
    def disk_full(*_args: object) -> None:
        memory._db.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(memory, "_replaced", disk_full)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        memory.add("The Eiffel Tower is in Rome.")
    monkeypatch.undo()
    assert memory.list() == [] and memory.add("The Eiffel Tower is in Rome.").id == "e1"


def test_a_reader_sees_another_writers_edits(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    writer = EditMemory(tmp_path / "memory", tiny_encoder, DIM)
    reader = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert len(reader) == 0
    writer.add("New fact.", question="New question?")
    assert [e.fact for e in reader.list()] == ["New fact."]
    writer.revoke("e1")
    assert reader.list() == [] and reader.get("e1").revoked_at is not None
    # A second writer (another process, say) interleaves with the first: each sees the other's edits.
    other = EditMemory(tmp_path / "memory", tiny_encoder, DIM)
    other.add("Other fact.", question="Same question?")
    replacement = writer.add("Writer fact.", question="same question")
    assert replacement.supersedes == "e2" and [e.id for e in other.list()] == ["e3"]


def test_a_missing_memory_is_empty_for_a_reader(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    reader = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert len(reader) == 0 and reader.list() == [] and not (tmp_path / "memory").exists()
    EditMemory(tmp_path / "memory", tiny_encoder, DIM).add("Later fact.")
    assert len(reader) == 1  # the file that appeared later is found


def test_a_damaged_log_is_refused_by_name_for_readers_and_writers(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / EDITS_FILE).write_bytes(b"garbage, not SQLite" * 100)
    for readonly in (True, False):
        with pytest.raises(IndexFolderError, match=f"{EDITS_FILE}: not a readable edit log .*move it aside"):
            EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=readonly)
    assert (tmp_path / "memory" / EDITS_FILE).read_bytes() == b"garbage, not SQLite" * 100  # left as it was
    (tmp_path / "memory" / EDITS_FILE).unlink()
    with sqlite3.connect(tmp_path / "memory" / EDITS_FILE) as other:  # another program's database
        other.execute("CREATE TABLE notes (body TEXT)")
    for readonly in (True, False):
        with pytest.raises(IndexFolderError, match="it holds the tables notes, none of them edits"):
            EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=readonly)
    with sqlite3.connect(tmp_path / "memory" / EDITS_FILE) as other:
        assert [name for (name,) in other.execute("SELECT name FROM sqlite_master")] == ["notes"]  # no tables added


def test_a_log_of_other_sized_vectors_is_refused_by_name(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """Opened for the wrong encoder's dimension, the memory used to fail its first search on a FAISS assertion."""
    EditMemory(tmp_path / "memory", tiny_encoder, DIM).add("The Eiffel Tower is in Rome.")
    with pytest.raises(IndexFolderError, match=f"holds {DIM}-d edit vectors, and this memory was opened for 8-d ones"):
        EditMemory(tmp_path / "memory", tiny_encoder, 8, readonly=True).search(np.zeros((1, 8), np.float32), 1)


def test_a_log_with_no_tables_yet_is_empty_for_a_reader(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """A writer creates the file, then its tables: a reader in between sees no edits, not an error."""
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / EDITS_FILE).touch()
    reader = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)
    assert len(reader) == 0 and reader.list() == []
    EditMemory(tmp_path / "memory", tiny_encoder, DIM).add("Later fact.")
    assert len(reader) == 1


def test_index_holds_its_memory(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    build_index(tmp_path / "idx", make_documents(3), tiny_encoder)
    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        index.memory.add("A stated fact.", question="Which fact?")
        assert index.stats()["edits"] == 1 and index.stats()["edits_total"] == 1
    memory = Index.open_memory(tmp_path / "idx", readonly=True)
    assert [e.fact for e in memory.list()] == ["A stated fact."]
    assert memory.search(tiny_encoder(["Which fact?"]), k=1)[0][0][1] == pytest.approx(1.0, abs=1e-5)


WRITER = """
from indexer.edit_memory import EditMemory
from indexer.encoder import TextEncoder
memory = EditMemory({folder!r}, TextEncoder({encoder!r}, device="cpu"), {dim})
n = 0
while True:
    n += 1
    edit = memory.add(f"fact {{n}}", question=f"question {{n}}?")
    if n % 3 == 0:
        memory.revoke(edit.id)
        print("REVOKED", edit.id, flush=True)
    print("ACK", edit.id, flush=True)
"""


def test_killed_writer_loses_no_acknowledged_edit(tmp_path: Path, tiny_encoder: TextEncoder, tiny_encoder_path: str) -> None:
    folder = tmp_path / "memory"
    code = WRITER.format(folder=str(folder), encoder=tiny_encoder_path, dim=DIM)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    acked, revoked = [], []
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        kind, edit_id = proc.stdout.readline().split()
        (acked if kind == "ACK" else revoked).append(edit_id)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 40
    db = sqlite3.connect(folder / EDITS_FILE)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    memory = EditMemory(folder, tiny_encoder, DIM)
    every = {e.id: e for e in memory.list(include_inactive=True)}
    assert set(acked) <= set(every) and all(every[i].revoked_at for i in revoked)
    # The memory goes on from where the writer stopped.
    assert memory.add("after the crash").id == f"e{len(every) + 1}"


def test_one_question_has_one_active_edit_the_newest(memory: EditMemory, tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    q = "Where is the Eiffel Tower?"
    # A revoked replacement about another question brings back an edit whose question a newer edit has since asked.
    rome = memory.add("The Eiffel Tower is in Rome.", question=q, answer="Rome")
    tall = memory.add("The Eiffel Tower is 330 m tall.", question="How tall is the Eiffel Tower?", supersedes=rome.id)
    berlin = memory.add("The Eiffel Tower is in Berlin.", question=q, answer="Berlin")
    assert berlin.supersedes is None  # rome was not active: nothing to replace then
    memory.revoke(tall.id)
    assert [e.id for e in memory.list()] == [berlin.id] and memory.get(rome.id).superseded_by == berlin.id
    assert [e.id for e, _ in memory.search(tiny_encoder([q]), k=5)[0]] == [berlin.id]
    assert [e.id for e in memory.history(berlin.id)] == [rome.id, tall.id, berlin.id]  # why rome is not active
    # An edit that supersedes one about another question also replaces the active edit of its own question.
    colosseum = memory.add("The Colosseum is in Paris.", question="Where is the Colosseum?")
    madrid = memory.add("The Eiffel Tower is in Madrid.", question=q, answer="Madrid", supersedes=colosseum.id)
    assert madrid.supersedes == colosseum.id and [e.id for e in memory.list()] == [madrid.id]
    assert memory.get(berlin.id).superseded_by == madrid.id and memory.get(colosseum.id).superseded_by == madrid.id
    assert [e.id for e, _ in memory.search(tiny_encoder([q]), k=5)[0]] == [madrid.id]
    reader = EditMemory(tmp_path / "memory", tiny_encoder, DIM, readonly=True)  # the log read afresh agrees
    assert reader.list(include_inactive=True) == memory.list(include_inactive=True)
    # Revoking it brings back both edits it replaced.
    memory.revoke(madrid.id)
    assert [e.id for e in memory.list()] == [berlin.id, colosseum.id] == [e.id for e in reader.list()]
    # History still shows madrid beside the edits of its question it once replaced, though no link in the log says so.
    assert {rome.id, berlin.id, madrid.id} <= {e.id for e in memory.history(berlin.id)}


def test_question_keys_ignore_unicode_form(memory: EditMemory, tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    composed = "Where is Café Procope?"
    decomposed = unicodedata.normalize("NFD", composed)
    lyon = memory.add("Café Procope is in Lyon.", question=composed, answer="Lyon")
    nice = memory.add("Café Procope is in Nice.", question=decomposed, answer="Nice")
    assert nice.supersedes == lyon.id
    madrid = memory.add("The Louvre is in Madrid.", question="Where is the Louvre\uff1f", answer="Madrid")  # full-width ?
    porto = memory.add("The Louvre is in Porto.", question="where is the louvre", answer="Porto")
    assert porto.supersedes == madrid.id and [e.id for e in memory.list()] == [nice.id, porto.id]
    # A log written before keys were normalised may hold two unlinked active edits for one question: the newest wins.
    db = sqlite3.connect(tmp_path / "memory" / EDITS_FILE)
    vector = tiny_encoder(["x"])[0].tobytes()
    with db:
        db.execute("INSERT INTO edits(fact, question, created_at, vector) VALUES ('Older.', 'Q\u00e9?', 1, ?)", (vector,))
        db.execute("INSERT INTO edits(fact, question, created_at, vector) VALUES ('Newer.', 'Qe\u0301', 2, ?)", (vector,))
    db.close()
    assert [e.id for e in memory.list()] == [nice.id, porto.id, "e6"] and memory.get("e5").superseded_by == "e6"


def test_text_that_is_not_utf8_is_refused(memory: EditMemory) -> None:
    bad = b"caf\xff".decode("utf-8", "surrogateescape")  # what the command line makes of bytes that are not UTF-8
    for field in ("fact", "question", "answer", "subject"):
        kwargs = {"fact": "A fact.", "question": "Q?", field: bad}
        with pytest.raises(ValueError, match=f"edit {field} is not valid Unicode"):
            memory.add(**kwargs)
    assert memory.list(include_inactive=True) == []
    with pytest.raises(ValueError, match="question is not valid Unicode"):
        check_request(bad, 3, "dense")
