"""An index folder: the passage store plus its dense and sparse indexes, updated atomically.

The write protocol (see ARCHITECTURE.md, "Index directory"):
1. A change is one SQLite transaction that adds passage rows and tombstones old ones, and bumps the
   generation. Its commit is the acknowledgement: after it, nothing can lose the change.
2. FAISS and tantivy are derived from the store. Each knows the generation it reflects and is
   brought forward by the same idempotent step, `catch up from generation a to b`: drop every row
   changed after a, add those visible at b. That step publishes a commit, repairs an index after a
   crash, and lets a read-only opener catch up in memory.
3. Readers search a `Snapshot` (one generation of every part) and keep it while a writer publishes
   the next; old rows stay in the store as tombstones, so a snapshot's passages stay readable.
"""
from __future__ import annotations

import copy
import functools
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tantivy
from tqdm.auto import tqdm

from indexer.chunking import chunk_document
from indexer.dense import KINDS, MIN_TRAINING_PASSAGES, UPDATABLE, DenseIndex
from indexer.edit_memory import MEMORY_DIR, EditMemory
from indexer.encoder import Encoder, TextEncoder, encoder_input, resolve_device
from indexer.fusion import reciprocal_rank_fusion
from indexer.manifest import IndexFolderError, Manifest
from indexer.interrupt import interrupts_held
from indexer.locks import file_lock
from indexer.records import (Document, Passage, SearchHit, document_fields_problem, document_id_problem, is_blank, text_list,
                             valid_unicode)
from indexer.sparse import SparseIndex
from indexer.store import PassageStore, StoredDocument, meta_json, passage_digest

STORE_FILE = "passages.sqlite"
DENSE_FILE = "dense.faiss"
SPARSE_DIR = "sparse"
LOCK_FILE = "write.lock"
WRITE_WAIT_SECONDS = 600.0  # how long a writer waits for another process's write before it gives up
MODES = ("dense", "sparse", "hybrid")
# The FAISS file is rewritten once this share of its rows changed since it was last written;
# smaller changes are replayed from the store on open, so a one-document upsert stays cheap.
DENSE_CHECKPOINT_FRACTION = 0.05
# Hybrid search fuses this many candidates from each side (at least k).
HYBRID_DEPTH = 50
UPSERT_BATCH = 1024


@dataclass(frozen=True)
class Snapshot:
    """One generation of every part of the index; searches read from exactly one snapshot."""

    generation: int
    dense: DenseIndex | None
    sparse: tantivy.Searcher | None


@dataclass
class ChangeReport:
    """What an upsert or delete did, and where its time went."""

    generation: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    passages_encoded: int = 0
    passages_reused: int = 0
    passages_removed: int = 0
    encode_seconds: float = 0.0
    index_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class Index:
    """Search and update an index folder. Open with `Index.create` or `Index.open`."""

    def __init__(self, path: Path, manifest: Manifest, encoder: Encoder | None, readonly: bool, device: str) -> None:
        self.path = path
        self.manifest = manifest
        self.readonly = readonly
        self.device = resolve_device(device)
        self._encoder = encoder
        self.store = PassageStore(path / STORE_FILE, readonly=readonly)
        try:
            # A reader of a folder that lost its BM25 part would see generation 0, an empty index, without a word.
            if readonly and manifest.sparse and not (path / SPARSE_DIR).is_dir():
                raise IndexFolderError(f"{path}: its BM25 part ({SPARSE_DIR}/) is missing: open the index for writing once "
                                       "(`rag-index upsert`, `rag-serve run`), which rebuilds it from the stored passages")
            self.sparse = SparseIndex(path / SPARSE_DIR, readonly=readonly) if manifest.sparse else None
        except BaseException:
            self.store.close()  # as Index.open does when a later step fails
            raise
        self._thread_lock = threading.Lock()
        self._snapshot = Snapshot(0, None, None)
        self._data_version = -1  # SQLite's count of other connections' commits when the snapshot last followed them
        self._dense_saved_gen = 0
        self._memory: EditMemory | None = None
        self._memory_lock = threading.Lock()  # not _thread_lock: a long write must not hold up the first edit search
        self._closed = False

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        encoder: Encoder,
        dense: str = "flat",
        sparse: bool = True,
        chunk_words: int = 100,
        chunk_overlap: int = 0,
        chunk_tokens: int = 0,
        device: str = "cpu",
    ) -> Index:
        """Make a new, empty index folder for `encoder`'s vectors."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise IndexFolderError(f"{path} already exists: choose a new --out, or use `rag-index upsert` to change it")
        if dense not in KINDS:
            raise IndexFolderError(f"unknown dense index kind {dense!r}: choose {', '.join(KINDS[:-1])} or {KINDS[-1]}")
        if chunk_tokens and not hasattr(encoder, "tokenizer"):
            raise IndexFolderError("token chunking needs an encoder with a tokenizer")
        reads = getattr(encoder, "max_length", None)
        if chunk_tokens and reads is not None and chunk_tokens > reads:  # the rest of each passage: never in its vector
            raise IndexFolderError(f"--chunk-tokens {chunk_tokens} is over the {reads} tokens the encoder reads of a passage: "
                                   f"dense search would never see the rest of each one; use at most {reads}")
        if chunk_overlap and (chunk_tokens or not chunk_words):  # else it would be ignored without a word
            raise IndexFolderError(f"an overlap of {chunk_overlap} words needs word chunking (--chunk-words above 0, no --chunk-tokens)")
        # Chunking settings are checked once here rather than failing on the first document.
        chunk_document(Document("check", "", "check"), words=chunk_words, overlap=chunk_overlap,
                       tokenizer=getattr(encoder, "tokenizer", None), tokens=chunk_tokens)
        path.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(encoder=encoder.name, dim=encoder.dim, encoder_dtype=getattr(encoder, "dtype", "float32"),
                            normalize=encoder.normalize, dense=dense,
                            sparse=sparse, chunk_words=chunk_words, chunk_overlap=chunk_overlap, chunk_tokens=chunk_tokens)
        PassageStore(path / STORE_FILE).close()
        manifest.write(path)
        return cls.open(path, encoder, device=device)

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | None = None, readonly: bool = False, device: str = "cpu") -> Index:
        """Open an index folder. A writer first repairs what a crashed writer left behind;
        a read-only opener serves the newest generation that every part has reached."""
        path = Path(path)
        manifest = Manifest.read(path)
        if not (path / STORE_FILE).is_file():  # a writer would otherwise start an empty store and serve nothing
            raise IndexFolderError(f"{path}: its {STORE_FILE} is missing, so the folder is damaged; rebuild the index with `rag-index build`")
        if encoder is not None:
            manifest.check_encoder(encoder.name, encoder.dim, getattr(encoder, "dtype", None))
        index = cls(path, manifest, encoder, readonly, device)
        try:
            if readonly:
                index._load(target=None)
            else:
                with index._write_lock():
                    index._load(target=index.store.generation)
                    index._publish_derived(index.store.generation)
        except BaseException:
            index.close()  # a caller that retries (a lock held elsewhere) would otherwise pile up connections
            raise
        return index

    def _load(self, target: int | None) -> None:
        """Load the persisted parts and bring the dense index, in memory, to `target` (None: to the sparse one)."""
        searcher, reached = self._sparse_reached()
        target = reached if target is None else target
        dense = None
        # Read before the file: a writer may save a newer file in between, and replaying changes the file already
        # has is harmless, while skipping ones it lacks would hide them from this reader for as long as it is open.
        saved = int(self.store.get_meta("dense_generation", "0"))
        if (self.path / DENSE_FILE).is_file():
            dense = DenseIndex.load(self.path / DENSE_FILE, self.manifest.dense, self.device)
        else:
            saved = 0  # no file (lost, or never written): rebuild from every change, not from the last save
        self._dense_saved_gen = saved
        dense = self._catch_up_dense(dense, since=min(saved, target), to=target)
        self._snapshot = Snapshot(min(target, reached), dense, searcher)

    def _sparse_reached(self) -> tuple[tantivy.Searcher | None, int]:
        """A BM25 searcher of its last commit and the generation that commit reflects; without BM25, none and the
        store's generation: what every part has reached."""
        if self.sparse is None:
            return None, self.store.generation
        searcher = self.sparse.searcher()
        return searcher, self.sparse.generation(searcher)

    @property
    def encoder(self) -> Encoder:
        """The query/passage encoder; loaded from the manifest's name on first use."""
        if self._encoder is None:
            self._encoder = manifest_encoder(self.manifest, self.device)
        return self._encoder

    @property
    def memory(self) -> EditMemory:
        """The edit memory (`memory/` in the folder), opened on first use; embeds edits with this index's encoder."""
        with self._memory_lock:
            if self._closed:  # else it would open the log again, and take edits for an index no one reads
                raise RuntimeError(f"the index {self.path} was closed: open it again to use its edit memory")
            if self._memory is None:
                self._memory = EditMemory(self.path / MEMORY_DIR, lambda texts: self.encoder(texts), self.manifest.dim, readonly=self.readonly)
            return self._memory

    @classmethod
    def open_memory(cls, path: str | Path, readonly: bool = False, device: str = "cpu") -> EditMemory:
        """The edit memory of an index folder alone, without loading its passages (the encoder loads on the first add)."""
        path = Path(path)
        manifest = Manifest.read(path)
        encoder = functools.cache(lambda: manifest_encoder(manifest, resolve_device(device)))
        return EditMemory(path / MEMORY_DIR, lambda texts: encoder()(texts), manifest.dim, readonly=readonly)

    @property
    def generation(self) -> int:
        """The generation searches read now."""
        return self._current_snapshot().generation

    def _current_snapshot(self) -> Snapshot:
        """The snapshot to read. A writer (e.g. the server) first follows what other processes committed since, such as a
        `rag-index upsert`, unless a write of its own is under way; a read-only opener keeps the generation it opened."""
        if self.readonly:
            return self._snapshot
        version = self.store.data_version()  # moves with other connections' commits only
        if version != self._data_version and self._thread_lock.acquire(blocking=False):
            try:
                searcher, target = self._sparse_reached()
                if target < self.store.generation:
                    # Committed, not yet published: its writer is at it, or died at it. With the lock free it is dead,
                    # and this writer finishes its work as opening for writing would; else nothing would until the
                    # next write, and the change would stay unseen, yet found by a delete.
                    with file_lock(self.path / LOCK_FILE) as held:
                        if held:
                            self._publish_derived(self.store.generation)
                            searcher, target = self._snapshot.sparse, self._snapshot.generation
                if target > self._snapshot.generation:
                    self._snapshot = Snapshot(target, self._dense_moved(self._snapshot, target), searcher)
                if target >= self.store.generation:  # else the other writer's BM25 part is still catching up: look again
                    self._data_version = version
            finally:
                self._thread_lock.release()
        return self._snapshot

    def close(self) -> None:
        """Release the folder: its databases, and BM25's searcher, whose reader threads live as long as it does. The
        Index cannot be used after."""
        self.store.close()
        with self._memory_lock:
            if self._memory is not None:
                self._memory.close()
            self._closed = True
        self.sparse = None
        self._snapshot = Snapshot(self._snapshot.generation, None, None)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer at a time, across threads and processes; IndexFolderError once another process's write has held
        it for WRITE_WAIT_SECONDS."""
        timeout = WRITE_WAIT_SECONDS
        with self._thread_lock:
            deadline = time.monotonic() + timeout
            said = False
            while True:
                with file_lock(self.path / LOCK_FILE) as held:
                    if held:
                        yield
                        return
                if time.monotonic() > deadline:
                    raise IndexFolderError(f"{self.path}: another process is writing to this index; try again later")
                if not said:  # else a wait of minutes reads as a hang
                    print(f"waiting for another process writing to {self.path} (up to {timeout:.0f} s)", file=sys.stderr)
                    said = True
                time.sleep(0.05)

    def _check_writable(self) -> None:
        if self.readonly:
            raise IndexFolderError("this index was opened read-only")
        if self.manifest.dense not in UPDATABLE and self.store.generation > 0:
            raise IndexFolderError(f"a {self.manifest.dense} index is read-only: rebuild with --dense flat, ivf or ivfpq to update it")

    def upsert(self, documents: Iterable[Document], progress: bool = False) -> ChangeReport:
        """Add or replace documents, in one atomic change. Only passages whose title or text
        changed are encoded again. Any bad document aborts the whole change. When no document
        is new or different, nothing is written and the generation stays as it is."""
        self._check_writable()
        report = ChangeReport()
        start = time.perf_counter()
        with self._write_lock(), tqdm(desc="upsert", unit="doc", disable=not progress, mininterval=1.0) as bar:
            gen = self.store.begin()
            try:
                seen: set[str] = set()
                batch: list[Document] = []
                for doc in documents:
                    _validate_document(doc, seen)
                    batch.append(doc)
                    if len(batch) == UPSERT_BATCH:
                        self._write_batch(batch, gen, report)
                        bar.update(len(batch))
                        batch = []
                self._write_batch(batch, gen, report)
                bar.update(len(batch))
                if report.documents_added or report.documents_updated:
                    self._check_trainable(gen)
                    self._commit_and_publish(gen)
                else:
                    self.store.rollback()
                    gen -= 1
            except BaseException:
                self.store.rollback()  # nothing to undo once committed
                raise
        report.generation = gen
        report.index_seconds = time.perf_counter() - start - report.encode_seconds
        return report

    def _check_trainable(self, gen: int) -> None:
        """ValueError, before the change commits, when the dense index would have to train on too few passages: the
        store would commit a change no writer could then publish, and every later open for writing would fail."""
        needed = MIN_TRAINING_PASSAGES[self.manifest.dense]
        if self._snapshot.dense is None and 0 < (n := self.store.counts(gen)["passages"]) < needed:
            raise ValueError(f"a {self.manifest.dense} index trains on its first passages and needs at least {needed}; "
                             f"this change would leave it with {n}: add more documents at once, or build with --dense flat")

    def _write_batch(self, docs: list[Document], gen: int, report: ChangeReport) -> None:
        live = self.store.live_documents([d.id for d in docs])
        changed = [d for d in docs if d.id not in live or live[d.id][1:] != (d.title, d.text, meta_json(d.meta))]
        report.documents_unchanged += len(docs) - len(changed)
        if not changed:
            return
        old = self.store.live_passages([d.id for d in changed])
        old_by_digest = {digest: vector for _, digest, vector in old.values()}
        keep: set[str] = set()
        new_rows: list[tuple[Passage, str, np.ndarray | None]] = []
        for doc in changed:
            for p in self._chunk(doc):
                digest = passage_digest(p.title, p.text)
                if p.id in old and old[p.id][1] == digest:
                    keep.add(p.id)  # same passage, same row: nothing to do
                elif digest in old_by_digest:
                    new_rows.append((p, digest, np.frombuffer(old_by_digest[digest], dtype=np.float32)))
                else:
                    new_rows.append((p, digest, None))
        to_encode = [i for i, (_, _, v) in enumerate(new_rows) if v is None]
        vectors = self._encode([encoder_input(new_rows[i][0].title, new_rows[i][0].text) for i in to_encode], report)
        for i, v in zip(to_encode, vectors):
            new_rows[i] = (new_rows[i][0], new_rows[i][1], v)
        removed = [row for pid, (row, _, _) in old.items() if pid not in keep]
        self.store.delete_rows(removed, gen)
        self.store.delete_documents([d.id for d in changed], gen)
        for doc in changed:
            self.store.put_document(doc, live[doc.id][0] + 1 if doc.id in live else 1, gen)
        self.store.put_passages(new_rows, gen)  # type: ignore[arg-type]
        report.documents_added += sum(d.id not in live for d in changed)
        report.documents_updated += sum(d.id in live for d in changed)
        report.passages_encoded += len(to_encode)
        report.passages_reused += len(new_rows) - len(to_encode)
        report.passages_removed += len(removed)

    def _chunk(self, doc: Document) -> list[Passage]:
        m = self.manifest
        tokenizer = self._chunk_tokenizer if m.chunk_tokens else None
        return chunk_document(doc, words=m.chunk_words, overlap=m.chunk_overlap, tokenizer=tokenizer, tokens=m.chunk_tokens)

    @functools.cached_property
    def _chunk_tokenizer(self) -> Any:
        """A copy of the encoder's tokenizer for the writer's chunking alone. A fast tokenizer's truncation is a setting
        of the object that each call sets: chunking (none) beside questions encoded on another thread (truncated) would
        otherwise cut documents short, silently."""
        return copy.deepcopy(self.encoder.tokenizer)

    def _encode(self, texts: list[str], report: ChangeReport) -> np.ndarray:
        start = time.perf_counter()
        vectors = self.encoder(texts) if texts else np.zeros((0, self.manifest.dim), np.float32)
        report.encode_seconds += time.perf_counter() - start
        if np.shape(vectors) != (len(texts), self.manifest.dim):  # else rows short of a vector would be committed
            raise ValueError(f"the encoder returned vectors of shape {np.shape(vectors)} for {len(texts)} passages; the index "
                             f"needs ({len(texts)}, {self.manifest.dim}): nothing was written")
        return vectors

    def delete(self, doc_ids: Sequence[str]) -> ChangeReport:
        """Delete documents and their passages, in one atomic change. An unknown id aborts it: KeyError naming it,
        nothing deleted. No id: nothing is written and the generation stays as it is."""
        ids = list(dict.fromkeys(text_list(doc_ids, "delete")))  # delete("12") would delete "1" and "2"
        self._check_writable()
        if not ids:
            return ChangeReport(generation=self.generation)
        start = time.perf_counter()
        with self._write_lock():
            missing = sorted(set(ids) - set(self.store.live_documents(ids)))
            if missing:
                shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                raise KeyError(f"no such document(s): {shown}; nothing was deleted")
            gen = self.store.begin()
            try:
                rows = [row for row, _, _ in self.store.live_passages(ids).values()]
                self.store.delete_rows(rows, gen)
                self.store.delete_documents(ids, gen)
                self._commit_and_publish(gen)
            except BaseException:
                self.store.rollback()  # nothing to undo once committed
                raise
        return ChangeReport(generation=gen, documents_deleted=len(ids), passages_removed=len(rows),
                            index_seconds=time.perf_counter() - start)

    def _commit_and_publish(self, gen: int) -> None:
        """Commit generation `gen` and publish it, with Ctrl-C held until both are done: an interrupted change is then
        either rolled back or whole and visible, as the command line says it is."""
        with interrupts_held():
            self.store.commit(gen)
            self._publish_derived(gen)

    def _publish_derived(self, gen: int) -> None:
        """Bring dense and sparse from the current snapshot to committed generation `gen`, persist, swap."""
        dense = self._dense_moved(self._snapshot, gen)
        if dense is not None and self._dense_checkpoint_due(dense):
            dense.save(self.path / DENSE_FILE)
            self.store.set_meta("dense_generation", str(gen))
            self._dense_saved_gen = gen
        searcher = None
        if self.sparse is not None:
            sparse_gen = self.sparse.generation()
            if sparse_gen < gen:
                changes = self.store.changed_rows(sparse_gen)
                present = [c.row for c in changes if c.added_gen <= sparse_gen]
                added = [c.row for c in changes if c.visible_at(gen)]
                self.sparse.apply(present, self.store.iter_passages(gen, added), gen)
            searcher = self.sparse.searcher()
        self.manifest.generation = gen
        self.manifest.counts = self.store.counts(gen)
        self.manifest.write(self.path)
        self._snapshot = Snapshot(gen, dense, searcher)

    def _dense_checkpoint_due(self, dense: DenseIndex) -> bool:
        if not (self.path / DENSE_FILE).is_file():
            return True
        pending = len(self.store.changed_rows(self._dense_saved_gen))
        return pending > DENSE_CHECKPOINT_FRACTION * max(dense.ntotal, 1)

    def _dense_moved(self, base: Snapshot, to: int) -> DenseIndex | None:
        """`base`'s dense index brought to generation `to`, copied first when that changes it (copy-on-write: searches
        in flight keep the old one)."""
        dense = base.dense.clone() if base.dense is not None and base.generation != to else base.dense
        return self._catch_up_dense(dense, since=base.generation, to=to)

    def _catch_up_dense(self, dense: DenseIndex | None, since: int, to: int) -> DenseIndex | None:
        """Return `dense` (known to be at least at generation `since`) moved to generation `to`."""
        changes = self.store.changed_rows(since)
        if dense is not None and dense.ntotal and changes and self.manifest.dense not in UPDATABLE:
            # HNSW cannot remove vectors: rebuilt from the store instead. Only recovery gets here (a sparse part lost,
            # or behind after a crash), as such an index takes no change after its first.
            return self._catch_up_dense(None, since=0, to=to)
        if dense is None:
            if not any(c.visible_at(to) for c in changes):
                return None
            training = None
            if self.manifest.dense in ("ivf", "ivfpq"):
                training = next(self.store.iter_vectors(to, self.manifest.dim, batch=200_000))[1]
            dense = DenseIndex.create(self.manifest.dim, self.manifest.dense, self.device, training)
        if dense.ntotal and changes:
            dense.remove(np.array([c.row for c in changes], dtype=np.int64))
        ids, vectors = self.store.vectors([c.row for c in changes if c.visible_at(to)], to, self.manifest.dim)
        dense.add(ids, vectors)
        return dense

    # -- reading -------------------------------------------------------------------------------
    @property
    def default_mode(self) -> str:
        """The search mode a question gets when it names none: hybrid, or dense on an index built without BM25."""
        return "hybrid" if self.sparse is not None else "dense"

    def check_mode(self, mode: str) -> None:
        """Refuse a search mode this index cannot serve: an unknown one, or BM25's on an index built without it."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}: choose dense, sparse or hybrid")
        if mode != "dense" and self.sparse is None:
            raise ValueError(f"mode {mode!r} needs BM25, and this index was built without it (--no-sparse): use mode dense")

    def search(self, query: str, k: int = 5, mode: str | None = None) -> list[SearchHit]:
        """The k best passages for `query`: dense, sparse (BM25) or hybrid (reciprocal rank fusion); None: `default_mode`."""
        return self.search_many([query], k=k, mode=mode)[0]

    def search_many(
        self, queries: Sequence[str], k: int = 5, mode: str | None = None, query_vectors: np.ndarray | None = None
    ) -> list[list[SearchHit]]:
        """Search a batch of queries against one snapshot (mode None: `default_mode`). `query_vectors`, one row per
        query, replaces the encoder (e.g. a trained query encoder)."""
        queries = text_list(queries, "search_many")
        mode = mode or self.default_mode
        self.check_mode(mode)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer of at least 1, got {k!r}")
        for q in queries:
            if not isinstance(q, str):
                raise TypeError(f"queries must be strings, got {type(q).__name__}")
            if is_blank(q):
                raise ValueError("empty query: ask something")
            valid_unicode(q, "the query")
        if query_vectors is not None and (np.ndim(query_vectors) != 2 or len(query_vectors) != len(queries)):
            # zip would pair what is left silently: passages found for one question returned as another's
            raise ValueError(f"query_vectors of shape {np.shape(query_vectors)} for {len(queries)} queries: one row per query")
        snap = self._current_snapshot()
        depth = k if mode != "hybrid" else max(k, HYBRID_DEPTH)
        dense_lists = sparse_lists = None
        if mode != "sparse":
            vectors = query_vectors if query_vectors is not None else self.encoder(list(queries))
            if snap.dense is None:
                dense_lists = [[] for _ in queries]
            else:
                # Never deeper than the index: FAISS sets aside room for every one of the k results asked for.
                scores, ids = snap.dense.search(vectors, min(depth, max(snap.dense.ntotal, 1)))
                dense_lists = [[(int(i), float(s)) for i, s in zip(ir, sr) if i >= 0] for ir, sr in zip(ids, scores)]
        if mode != "dense":
            sparse_lists = [self.sparse.search(snap.sparse, q, depth) for q in queries]
        # Outside hybrid, each side already searched exactly k deep.
        if mode == "dense":
            results = dense_lists
        elif mode == "sparse":
            results = sparse_lists
        else:
            results = [reciprocal_rank_fusion([[r for r, _ in d], [r for r, _ in s]], k)
                       for d, s in zip(dense_lists, sparse_lists)]
        stored = self.store.passages({r for hits in results for r, _ in hits}, snap.generation)
        return [[stored[r].hit(s) for r, s in hits if r in stored] for hits in results]

    def document(self, doc_id: str) -> StoredDocument | None:
        """A document as the current snapshot has it, or None."""
        return self.store.document(doc_id, self._current_snapshot().generation)

    def stats(self) -> dict:
        """Counts, encoder and size of this index, at the current snapshot."""
        gen = self._current_snapshot().generation
        return {**self.store.counts(gen), **self.memory.stats(), "dim": self.manifest.dim, "encoder": self.manifest.encoder,
                "encoder_dtype": self.manifest.encoder_dtype, "dense": self.manifest.dense, "sparse": self.manifest.sparse,
                "generation": gen, "bytes": _folder_bytes(self.path)}


def manifest_encoder(manifest: Manifest, device: str) -> TextEncoder:
    """The encoder a manifest names, in the precision the index was built with, checked against its dimension."""
    try:
        encoder = TextEncoder(manifest.encoder, device=device, dtype=manifest.encoder_dtype)
    except ValueError as exc:  # an encoder_dtype this program does not know
        raise IndexFolderError(f"unreadable manifest: {exc}") from exc
    manifest.check_encoder(encoder.name, encoder.dim)
    return encoder


def build_index(out: str | Path, documents: Iterable[Document], encoder: Encoder, progress: bool = False, **options) -> ChangeReport:
    """Build a new index folder from documents. It appears at `out` only once complete."""
    out = Path(out)
    if out.exists():
        raise IndexFolderError(f"{out} already exists: choose a new --out, or use `rag-index upsert` to change it")
    # Checked here, else the error names the staging folder beside it, which the user never asked for.
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise IndexFolderError(f"{out}: {above} is a file, not a folder: choose another --out")
    if above is not None and not os.access(above, os.W_OK):
        raise IndexFolderError(f"{out}: the folder {above} is not writable: choose another --out")
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with Index.create(tmp, encoder, **options) as index:
            report = index.upsert(documents, progress=progress)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _folder_bytes(path: Path) -> int:
    """Bytes of the files under `path`; a file or folder a writer replaces while they are summed counts as gone.

    os.walk skips folders it cannot list (onerror unset), so only the stat of each file needs guarding.
    """
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def _validate_document(doc: Document, seen: set[str]) -> None:
    if not isinstance(doc.id, str):
        raise ValueError(f"document id {doc.id!r} is a {type(doc.id).__name__}, not a string")
    problem = document_id_problem(doc.id)
    if problem:
        raise ValueError(problem)
    if not isinstance(doc.text, str) or is_blank(doc.text):
        raise ValueError(f"document {doc.id!r} has no text")
    if not isinstance(doc.title, str):  # bytes were stored and served back as b'...'
        raise ValueError(f"document {doc.id!r} has a title of type {type(doc.title).__name__}, not a string ('' for none)")
    if not isinstance(doc.meta, dict) or not all(isinstance(key, str) for key in doc.meta):
        raise ValueError(f"document {doc.id!r}: meta must be a dict with string keys (JSON's), got {doc.meta!r:.80}")
    problem = document_fields_problem(doc.title, doc.meta)
    if problem:
        raise ValueError(f"document {doc.id!r} has {problem}")
    if doc.id in seen:
        raise ValueError(f"duplicate document id {doc.id!r} in one change")
    seen.add(doc.id)
