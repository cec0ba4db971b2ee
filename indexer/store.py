"""SQLite passage store: the source of truth of an index folder.

Every passage version is its own row; a change never rewrites a row's content, it adds rows and
tombstones old ones (`deleted_gen`). A row is visible at generation g when
`added_gen <= g < deleted_gen`. This lets a reader keep a consistent snapshot while a writer commits,
and lets the derived indexes (FAISS, tantivy) be brought to any generation from the store alone:
the row id is their id, and the passage vector is kept here.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from indexer.manifest import IndexFolderError
from indexer.records import Document, Passage, SearchHit

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    row INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    version INTEGER NOT NULL,
    added_gen INTEGER NOT NULL,
    deleted_gen INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live ON documents(doc_id) WHERE deleted_gen IS NULL;
CREATE INDEX IF NOT EXISTS documents_deleted ON documents(deleted_gen);
CREATE TABLE IF NOT EXISTS passages (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    digest TEXT NOT NULL,
    vector BLOB NOT NULL,
    added_gen INTEGER NOT NULL,
    deleted_gen INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS passages_live ON passages(id) WHERE deleted_gen IS NULL;
-- Full (not partial) indexes on doc_id: a lookup of any version at a generation needs them.
-- passages_by_doc replaces the partial passages_doc of older folders, which such lookups cannot use.
DROP INDEX IF EXISTS passages_doc;
CREATE INDEX IF NOT EXISTS passages_by_doc ON passages(doc_id);
CREATE INDEX IF NOT EXISTS documents_by_doc ON documents(doc_id);
CREATE INDEX IF NOT EXISTS passages_added ON passages(added_gen);
CREATE INDEX IF NOT EXISTS passages_deleted ON passages(deleted_gen);
"""

MMAP_BYTES = 1 << 30  # address space only: pages are the OS's file cache, shared by every opener
VISIBLE = "added_gen <= :gen AND (deleted_gen IS NULL OR deleted_gen > :gen)"
# A document and its passage ids at a generation (`PassageStore.document`); the doc_id indexes serve both.
DOCUMENT_SQL = f"SELECT doc_id, title, text, meta, version FROM documents WHERE doc_id = :id AND {VISIBLE}"
DOCUMENT_PASSAGES_SQL = f"SELECT id FROM passages WHERE doc_id = :id AND {VISIBLE} ORDER BY row"


def passage_digest(title: str, text: str) -> str:
    """Fingerprint of what the encoder sees: an unchanged digest means the old vector can be kept."""
    return hashlib.sha1(f"{title}\x00{text}".encode()).hexdigest()


def meta_json(meta: dict[str, Any]) -> str:
    """How a document's meta is stored (and compared, to tell an unchanged document)."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class RowChange:
    """A passage row touched after some generation."""

    row: int
    added_gen: int
    deleted_gen: int | None

    def visible_at(self, gen: int) -> bool:
        return self.added_gen <= gen and (self.deleted_gen is None or self.deleted_gen > gen)


class StoredPassage(NamedTuple):
    """A passage version as stored (a tuple: made straight from a SQLite row, cheaply, per search hit)."""

    row: int
    id: str
    doc_id: str
    title: str
    text: str

    def hit(self, score: float) -> SearchHit:
        """This passage as a search result with `score`."""
        return SearchHit(self.id, self.doc_id, self.title, self.text, score, self.row)


@dataclass(frozen=True)
class StoredDocument:
    doc_id: str
    title: str
    text: str
    meta: dict[str, Any]
    version: int
    passage_ids: list[str]


class PassageStore:
    """Passages, documents and their versions in one SQLite file (WAL mode, durable commits).

    Read-only, it changes no data; SQLite itself still creates or maps its `-wal` and `-shm`
    coordination files, which a WAL reader needs to read consistently beside a writer."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
        try:
            # check_same_thread=False: the server shares one store between its worker threads.
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 30000")
            # Reads go through a memory map instead of a read() call and a copy per page: a search
            # fetches a few rows from random pages.
            self.db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")  # an acknowledged commit survives power loss
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT value FROM meta LIMIT 1")  # a damaged or foreign file fails here, not mid-search
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):  # WAL mode writes its shared-memory file beside the store, even to read
                raise IndexFolderError(f"{self.path}: the folder is read-only ({exc}), and SQLite writes beside the store "
                                       "even to read it: make the folder writable, or copy the index where it is") from exc
            raise IndexFolderError(f"{self.path}: not a readable index store ({exc}); rebuild the index with `rag-index build`") from exc

    def close(self) -> None:
        self.db.close()

    # -- metadata ---------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def data_version(self) -> int:
        """SQLite's data_version: it changes when another connection commits, never for this one's own commits."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    @property
    def generation(self) -> int:
        """The last committed generation (0 for an empty index)."""
        return int(self.get_meta("generation", "0"))

    # -- reads ------------------------------------------------------------------------------
    def live_documents(self, doc_ids: Sequence[str]) -> dict[str, tuple[int, str, str, str]]:
        """doc_id -> (version, title, text, meta json) for the given ids that are live now."""
        out: dict[str, tuple[int, str, str, str]] = {}
        for chunk in _chunks(list(doc_ids), 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT doc_id, version, title, text, meta FROM documents WHERE deleted_gen IS NULL AND doc_id IN ({marks})"
            for doc_id, version, title, text, meta in self.db.execute(sql, chunk):
                out[doc_id] = (version, title, text, meta)
        return out

    def live_passages(self, doc_ids: Sequence[str]) -> dict[str, tuple[int, str, bytes]]:
        """passage id -> (row, digest, vector bytes) for the live passages of the given documents."""
        out: dict[str, tuple[int, str, bytes]] = {}
        for chunk in _chunks(list(doc_ids), 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, row, digest, vector FROM passages WHERE deleted_gen IS NULL AND doc_id IN ({marks})"
            for pid, row, digest, vector in self.db.execute(sql, chunk):
                out[pid] = (row, digest, vector)
        return out

    def passages(self, rows: Iterable[int], gen: int) -> dict[int, StoredPassage]:
        """The given rows that are visible at `gen`, by row."""
        out: dict[int, StoredPassage] = {}
        for chunk in _chunks(list(rows), 500):
            sql = _visible_rows_sql("row, id, doc_id, title, text", len(chunk))
            out.update((r[0], StoredPassage._make(r)) for r in self.db.execute(sql, [*chunk, gen, gen]))
        return out

    def document(self, doc_id: str, gen: int) -> StoredDocument | None:
        """A document as it was at `gen`, with the ids of its passages."""
        row = self.db.execute(DOCUMENT_SQL, {"id": doc_id, "gen": gen}).fetchone()
        if row is None:
            return None
        ids = [r[0] for r in self.db.execute(DOCUMENT_PASSAGES_SQL, {"id": doc_id, "gen": gen})]
        return StoredDocument(row[0], row[1], row[2], json.loads(row[3]), row[4], ids)

    def changed_rows(self, since: int) -> list[RowChange]:
        """Rows added or deleted after generation `since`: all a derived index must revisit to catch up."""
        sql = ("SELECT row, added_gen, deleted_gen FROM passages WHERE added_gen > ? "
               "UNION SELECT row, added_gen, deleted_gen FROM passages WHERE deleted_gen > ?")
        return [RowChange(*r) for r in self.db.execute(sql, (since, since))]

    def vectors(self, rows: Sequence[int], gen: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, vectors) of the given rows visible at `gen`."""
        ids, blobs = [], []
        for chunk in _chunks(list(rows), 500):
            for row, blob in self.db.execute(_visible_rows_sql("row, vector", len(chunk)), [*chunk, gen, gen]):
                ids.append(row)
                blobs.append(blob)
        return _as_arrays(ids, blobs, dim)

    def iter_vectors(self, gen: int, dim: int, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All visible (row ids, vectors) at `gen`, in batches (for building or training an index)."""
        cursor = self.db.execute(f"SELECT row, vector FROM passages WHERE {VISIBLE} ORDER BY row", {"gen": gen})
        while rows := cursor.fetchmany(batch):
            yield _as_arrays([r[0] for r in rows], [r[1] for r in rows], dim)

    def iter_passages(self, gen: int, rows: Sequence[int] | None = None) -> Iterator[StoredPassage]:
        """Visible passages at `gen` (all of them, or those among `rows`)."""
        if rows is not None:
            yield from self.passages(rows, gen).values()
            return
        for r in self.db.execute(f"SELECT row, id, doc_id, title, text FROM passages WHERE {VISIBLE} ORDER BY row", {"gen": gen}):
            yield StoredPassage(*r)

    def counts(self, gen: int) -> dict[str, int]:
        """Live passages and documents at `gen`, and tombstoned passage versions kept for snapshots."""
        passages = self.db.execute(f"SELECT COUNT(*) FROM passages WHERE {VISIBLE}", {"gen": gen}).fetchone()[0]
        documents = self.db.execute(f"SELECT COUNT(*) FROM documents WHERE {VISIBLE}", {"gen": gen}).fetchone()[0]
        deleted = self.db.execute("SELECT COUNT(*) FROM passages WHERE deleted_gen <= :gen", {"gen": gen}).fetchone()[0]
        return {"passages": passages, "documents": documents, "deleted": deleted}

    # -- writes -----------------------------------------------------------------------------
    def begin(self) -> int:
        """Open a write transaction; returns the generation it will commit."""
        self.db.execute("BEGIN IMMEDIATE")
        return self.generation + 1

    def commit(self, gen: int) -> None:
        """Make the open transaction generation `gen`: durable once this returns."""
        self.set_meta("generation", str(gen))
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def put_document(self, doc: Document, version: int, gen: int) -> None:
        self.db.execute(
            "INSERT INTO documents(doc_id, title, text, meta, version, added_gen) VALUES (?, ?, ?, ?, ?, ?)",
            (doc.id, doc.title, doc.text, meta_json(doc.meta), version, gen),
        )

    def put_passages(self, passages: Iterable[tuple[Passage, str, np.ndarray]], gen: int) -> None:
        """Insert new passage versions (passage, digest, float32 vector)."""
        self.db.executemany(
            "INSERT INTO passages(id, doc_id, title, text, digest, vector, added_gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((p.id, p.doc_id, p.title, p.text, digest, np.asarray(v, dtype=np.float32).tobytes(), gen)
             for p, digest, v in passages),
        )

    def delete_documents(self, doc_ids: Sequence[str], gen: int) -> None:
        """Tombstone the live versions of these documents."""
        for chunk in _chunks(list(doc_ids), 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"UPDATE documents SET deleted_gen = ? WHERE deleted_gen IS NULL AND doc_id IN ({marks})", [gen, *chunk])

    def delete_rows(self, rows: Sequence[int], gen: int) -> None:
        """Tombstone passage rows."""
        for chunk in _chunks(list(rows), 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"UPDATE passages SET deleted_gen = ? WHERE row IN ({marks})", [gen, *chunk])


@lru_cache(maxsize=256)
def _visible_rows_sql(columns: str, n: int) -> str:
    """SELECT `columns` of n given rows visible at a generation (the last two parameters); built once per n."""
    return f"SELECT {columns} FROM passages WHERE row IN ({','.join('?' * n)}) AND {VISIBLE.replace(':gen', '?')}"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_arrays(ids: list[int], blobs: list[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim) if blobs else np.zeros((0, dim), np.float32)
    return np.asarray(ids, dtype=np.int64), vectors
