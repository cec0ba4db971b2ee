"""The edit memory: stated facts that override the corpus, in an append-only log with its own dense index.

Layout: `INDEX/memory/edits.sqlite`. Rows are never rewritten: an edit is one row of `edits`, a
revocation one row of `revocations`, and a newer edit names the one it replaces (`supersedes`). So the
log is the whole history, and each change is one SQLite transaction: atomic, durable once acknowledged.

The dense index over the active edits is derived from the log (each row keeps its vector) and lives in
memory: rebuilding it from a few thousand rows takes milliseconds, so no second file can drift from the
log. Another process's writes are picked up on the next search (`PRAGMA data_version`).
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from indexer.dense import DenseIndex
from indexer.manifest import IndexFolderError
from indexer.records import is_blank, valid_unicode

MEMORY_DIR = "memory"
EDITS_FILE = "edits.sqlite"
MAX_TEXT_CHARS = 2000
SCHEMA = """
CREATE TABLE IF NOT EXISTS edits (
    row INTEGER PRIMARY KEY,
    fact TEXT NOT NULL,
    question TEXT,
    answer TEXT,
    subject TEXT,
    created_at REAL NOT NULL,
    supersedes INTEGER REFERENCES edits(row),
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (edit_row INTEGER PRIMARY KEY REFERENCES edits(row), revoked_at REAL NOT NULL,
                                        last_edit INTEGER);
"""
# last_edit: the newest edit row when the revoke was made, so the log says which edits came before it whatever the
# clock did. Logs written before it was kept have none (NULL): their times order them.


class EditNotFound(LookupError):
    """No edit has this id."""


@dataclass(frozen=True)
class Edit:
    """One stated fact. Active unless revoked or replaced (`superseded_by`) by a newer, unrevoked edit that names
    it in `supersedes` or, failing that, asks the same question (`question_key`)."""

    id: str
    fact: str
    question: str | None
    answer: str | None
    subject: str | None
    created_at: str
    supersedes: str | None = None
    revoked_at: str | None = None
    superseded_by: str | None = None

    @property
    def active(self) -> bool:
        """Neither revoked nor superseded: questions about it are answered from it."""
        return self.revoked_at is None and self.superseded_by is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def edit_id(row: int) -> str:
    return f"e{row}"


def edit_row(id: str) -> int:
    """The log row of an edit id ("e17" -> 17); EditNotFound for anything else."""
    if not isinstance(id, str) or not re.fullmatch(r"e[1-9][0-9]{0,17}", id):
        raise EditNotFound(f"no edit {id!r}: edit ids look like e1, e2, ... (see `rag-index edit list`)")
    return int(id[1:])


def question_key(question: str) -> str:
    """A question up to Unicode form (NFKC: "e" plus a combining accent is "é", "？" is "?"), case, spacing and end
    punctuation: edits with the same key are about the same thing. Computed when the log is read, never stored."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split()).rstrip("?.! ")


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _text(name: str, value: Any, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or is_blank(value):
        raise ValueError(f"edit {name} must be a non-empty string" + ("" if required else " or left out"))
    valid_unicode(value, f"edit {name}")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"edit {name} is {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value.strip()


@dataclass
class _State:
    """The edits as of the last read of the log plus this process's writes since, and the dense index over
    the active ones (ids = rows). Read and changed only under EditMemory._lock."""

    edits: dict[int, Edit]
    dense: DenseIndex | None
    by_question: dict[str, int]  # question_key -> row of the active edit that asks it


class EditMemory:
    """Add, revoke, list and search edits. `encode(texts) -> np.ndarray` embeds edit keys for search."""

    def __init__(self, folder: str | Path, encode: Callable[[list[str]], np.ndarray], dim: int, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / EDITS_FILE
        self.readonly = readonly
        self.dim = dim
        self._encode = encode
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._data_version = -1
        self._state = _State({}, None, {})
        if not readonly:
            self.folder.mkdir(parents=True, exist_ok=True)
        with self._reading():
            pass

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and (not self.readonly or self.path.is_file()):
            uri = f"file:{self.path}?mode={'ro' if self.readonly else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            try:
                made = self._set_up(db)
            except sqlite3.DatabaseError as exc:
                db.close()
                if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, out of space: not the log's fault
                    if "readonly" in str(exc):
                        raise _read_only(self.path, exc) from exc
                    raise
                raise IndexFolderError(f"{self.path}: not a readable edit log ({exc}): move it aside to start with no "
                                       "edits, or put back a copy") from exc
            if not made:  # a writer has created the file but not its tables yet: no edits so far
                db.close()
                return None
            self._db = db
        return self._db

    def _set_up(self, db: sqlite3.Connection) -> bool:
        """Ready `db` for use; False for a reader when the log has no tables yet. DatabaseError for a file that is not
        an edit log (another database's tables, or not SQLite at all)."""
        db.execute("PRAGMA busy_timeout = 30000")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "edits" not in tables:  # sqlite3.DatabaseError, not OperationalError: the file is at fault
            raise sqlite3.DatabaseError(f"it holds the tables {', '.join(sorted(tables))}, none of them edits")
        if self.readonly and not tables:
            return False
        if not self.readonly:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # an acknowledged edit survives power loss
            db.executescript(SCHEMA)
            if "last_edit" not in _columns(db, "revocations"):  # a log from before it was kept
                with self._transaction(db):  # one writer adds it: another may be opening the same log
                    if "last_edit" not in _columns(db, "revocations"):
                        db.execute("ALTER TABLE revocations ADD COLUMN last_edit INTEGER")
        db.execute("SELECT row FROM edits LIMIT 1")  # a damaged file fails here, not at the first question
        return True

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any failure. Only while a transaction is open: SQLite ends one
        itself on some errors (a full disk, an interrupt), and a ROLLBACK then would raise over the error that matters."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise _read_only(self.path, exc) from exc
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reading the log ---------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[_State]:
        """The current state, under the lock; re-read from the log when another connection committed since."""
        with self._lock:
            db = self._connect()
            yield self._current(db) if db is not None else self._state

    def _current(self, db: sqlite3.Connection) -> _State:
        # data_version changes when another connection commits, never for this connection's own commits.
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._state, self._data_version = self._read(db), version
        return self._state

    def _read(self, db: sqlite3.Connection) -> _State:
        rows = db.execute("SELECT row, fact, question, answer, subject, created_at, supersedes, vector FROM edits ORDER BY row").fetchall()
        last_edit = "last_edit" if "last_edit" in _columns(db, "revocations") else "NULL"  # an older log, read-only
        revocations = db.execute(f"SELECT edit_row, revoked_at, {last_edit} FROM revocations").fetchall()
        revoked = {row: at for row, at, _ in revocations}
        newest_then = {row: newest for row, _, newest in revocations}
        # Walking the log newest first, every edit that can replace a row comes before it. A chain of replacements is
        # linear (only an active edit can be superseded): an edit is replaced when a later edit of its chain is
        # unrevoked or itself replaced. One question has at most one active edit: an edit the chains leave active (its
        # replacement revoked, say) is replaced by the next newer unrevoked edit that asks the same question, as if
        # that one named it; and a revoked edit passes that one on to the edit it superseded, as a named one would,
        # when it was made before the revoke (it replaced the edit then; one made after found it revoked already).
        created_at = {row: created for row, *_, created, _sup, _vec in rows}
        replaced_by: dict[int, int] = {}
        newer: dict[str, int] = {}  # question_key -> the oldest unrevoked row seen so far
        for row, _fact, question, *_, supersedes, _vec in reversed(rows):
            key = None if question is None else question_key(question)
            if row not in revoked and key in newer and row not in replaced_by:
                replaced_by[row] = newer[key]
            if supersedes is not None and supersedes not in replaced_by:
                live: int | None = row
                if row in revoked:
                    asked = newer.get(key) if key is not None else None
                    before = asked is not None and (asked <= newest_then[row] if newest_then[row] is not None
                                                    else created_at[asked] < revoked[row])
                    live = replaced_by.get(row, asked if before else None)
                if live is not None:
                    replaced_by[supersedes] = live
            if row not in revoked and key is not None:
                newer[key] = row
        edits = {
            row: Edit(edit_id(row), fact, question, answer, subject, _when(created), None if sup is None else edit_id(sup),
                      _when(revoked.get(row)), None if row not in replaced_by else edit_id(replaced_by[row]))
            for row, fact, question, answer, subject, created, sup, _vec in rows
        }
        active = [(row, vec) for row, *_, vec in rows if edits[row].active]
        wrong = next((len(vec) // 4 for _, vec in active if len(vec) != 4 * self.dim), None)
        if wrong is not None:  # FAISS would stop the process on an assertion at the first search
            raise IndexFolderError(f"{self.path} holds {wrong}-d edit vectors, and this memory was opened for {self.dim}-d "
                                   "ones: open it with the index it belongs to (its manifest's encoder)")
        dense = None
        if active:
            dense = DenseIndex.create(self.dim, "flat")
            dense.add(np.array([r for r, _ in active], dtype=np.int64),
                      np.stack([np.frombuffer(v, dtype=np.float32) for _, v in active]))
        return _State(edits, dense, _by_question(edits))

    def get(self, id: str) -> Edit:
        """One edit by id, active or not."""
        row = edit_row(id)
        with self._reading() as state:
            edit = state.edits.get(row)
        if edit is None:
            raise EditNotFound(f"no edit {id!r}: see `rag-index edit list --all`")
        return edit

    def list(self, include_inactive: bool = False) -> list[Edit]:
        """The active edits, oldest first (with include_inactive, every edit ever made)."""
        with self._reading() as state:
            return [e for e in state.edits.values() if include_inactive or e.active]

    def history(self, id: str) -> list[Edit]:
        """Every edit about the same thing as `id`, oldest first: what it replaced, what replaced it, revoked ones
        too; linked by `supersedes`, `superseded_by` or asking the same question, step by step."""
        row = edit_row(id)
        with self._reading() as state:  # one snapshot: an edit added meanwhile must not half appear
            if row not in state.edits:
                raise EditNotFound(f"no edit {id!r}: see `rag-index edit list --all`")
            edits = {e.id: e for e in state.edits.values()}
        links: dict[str, set[str]] = {i: set() for i in edits}
        asking: dict[str, str] = {}  # question_key -> the last edit seen asking it
        for edit in edits.values():
            # An edit that once replaced another by asking its question stays linked to it after a revoke.
            same_question = None if edit.question is None else asking.get(question_key(edit.question))
            for other in (edit.supersedes, edit.superseded_by, same_question):
                if other is not None:
                    links[edit.id].add(other)
                    links[other].add(edit.id)
            if edit.question is not None:
                asking[question_key(edit.question)] = edit.id
        family: set[str] = set()
        todo = [edit_id(row)]
        while todo:
            current = todo.pop()
            if current not in family:
                family.add(current)
                todo.extend(links[current])
        return [e for e in edits.values() if e.id in family]

    def __len__(self) -> int:
        """Active edits."""
        with self._reading() as state:
            return 0 if state.dense is None else state.dense.ntotal

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Edit, float]]]:
        """The k active edits nearest to each query vector (inner product), best first."""
        with self._reading() as state:
            if state.dense is None or state.dense.ntotal == 0 or k < 1:
                return [[] for _ in range(len(query_vectors))]
            scores, rows = state.dense.search(np.asarray(query_vectors, dtype=np.float32), min(k, state.dense.ntotal))
            return [[(state.edits[int(r)], float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def stats(self) -> dict[str, int]:
        """Active edits and all edits ever made."""
        with self._reading() as state:
            return {"edits": sum(e.active for e in state.edits.values()), "edits_total": len(state.edits)}

    # -- writing -----------------------------------------------------------------------------
    def _writable(self) -> sqlite3.Connection:
        if self.readonly:
            raise PermissionError("this edit memory was opened read-only")
        return self._connect()

    def add(self, fact: str, question: str | None = None, answer: str | None = None, subject: str | None = None,
            supersedes: str | None = None) -> Edit:
        """Record a fact; it is searchable when this returns. It replaces `supersedes` (the log's link), and the
        active edit that asks the same question, if any: one question has one active edit."""
        fact = _text("fact", fact, required=True)
        question, answer, subject = _text("question", question), _text("answer", answer), _text("subject", subject)
        if answer is not None and question is None:
            raise ValueError("an edit's answer needs its question: give --question too, or state the answer in the fact")
        vector = np.asarray(self._encode([question or fact]), dtype=np.float32).reshape(-1)
        if vector.shape != (self.dim,):
            raise ValueError(f"the encoder gave a vector of shape {vector.shape}; this memory holds {self.dim}-d vectors")
        db = self._writable()
        with self._lock:
            with self._transaction(db):
                state = self._current(db)
                replaced = self._replaced(state, question, supersedes)
                created = time.time()
                cursor = db.execute(
                    "INSERT INTO edits(fact, question, answer, subject, created_at, supersedes, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (fact, question, answer, subject, created, replaced, vector.tobytes()))
            # Committed: until the state holds it too, a failure leaves the next call to read the log again (this
            # connection's own commits do not change SQLite's data_version).
            version, self._data_version = self._data_version, -1
            edit = Edit(edit_id(cursor.lastrowid), fact, question, answer, subject, _when(created), None if replaced is None else edit_id(replaced))
            _add_edit(state, cursor.lastrowid, edit, vector, replaced, self.dim)
            self._data_version = version
            return edit

    def _replaced(self, state: _State, question: str | None, supersedes: str | None) -> int | None:
        if supersedes is not None:
            row = edit_row(supersedes)
            old = state.edits.get(row)
            if old is None:
                raise EditNotFound(f"no edit {supersedes!r} to supersede: see `rag-index edit list`")
            if not old.active:
                raise ValueError(f"edit {supersedes} is no longer active ({'revoked' if old.revoked_at else 'superseded by ' + str(old.superseded_by)}); "
                                 "supersede the active one")
            return row
        return None if question is None else state.by_question.get(question_key(question))

    def revoke(self, id: str) -> Edit:
        """Withdraw an edit: questions about it are answered as before it was made (or by the edit it had replaced)."""
        row = edit_row(id)
        db = self._writable()
        with self._lock:
            with self._transaction(db):
                edit = self._current(db).edits.get(row)
                if edit is None:
                    raise EditNotFound(f"no edit {id!r}: see `rag-index edit list`")
                if edit.revoked_at is not None:
                    raise ValueError(f"edit {id} was already revoked at {edit.revoked_at}")
                db.execute("INSERT INTO revocations(edit_row, revoked_at, last_edit) VALUES (?, ?, (SELECT MAX(row) FROM edits))",
                           (row, time.time()))
            # Rare, and it may bring back an edit it had replaced: read it all again (again at the next call, if this fails).
            version, self._data_version = self._data_version, -1
            self._state = self._read(db)
            self._data_version = version
            return self._state.edits[row]


def _read_only(path: Path, exc: sqlite3.OperationalError) -> IndexFolderError:
    """The error for an edit log on a read-only file or folder (SQLite's WAL writes beside the log even to read it)."""
    return IndexFolderError(f"{path}: the edit log is read-only ({exc}): make the index folder writable to change or "
                            "read its edits")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {name for _, name, *_ in db.execute(f"PRAGMA table_info({table})")}


def _add_edit(state: _State, row: int, edit: Edit, vector: np.ndarray, replaced: int | None, dim: int) -> None:
    """Bring `state` up to date with one new edit without re-reading the log: it replaces `replaced` and the active
    edit that asks its question, if that is another one (as `EditMemory._read` finds when it reads the log)."""
    state.edits[row] = edit
    if state.dense is None:
        state.dense = DenseIndex.create(dim, "flat")
    owner = None if edit.question is None else state.by_question.get(question_key(edit.question))
    for old_row in {replaced, owner} - {None}:
        old = state.edits[old_row] = replace(state.edits[old_row], superseded_by=edit.id)
        state.dense.remove(np.array([old_row], dtype=np.int64))
        if old.question is not None:
            state.by_question.pop(question_key(old.question), None)
    state.dense.add(np.array([row], dtype=np.int64), vector.reshape(1, -1))
    if edit.question is not None:
        state.by_question[question_key(edit.question)] = row


def _by_question(edits: dict[int, Edit]) -> dict[str, int]:
    return {question_key(e.question): row for row, e in edits.items() if e.active and e.question is not None}
