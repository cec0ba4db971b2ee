"""Sparse index: BM25 over passage title and text with tantivy (English stemming).

Each commit also rewrites one marker document holding the store generation it reflects, so the
index's generation is committed atomically with its contents (tantivy commits are atomic).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import tantivy

from indexer.manifest import IndexFolderError
from indexer.store import StoredPassage

MARKER_ROW = -1
_FIELDS = ["title", "text"]  # searched by a query
_WORD = re.compile(r"\w+")


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("row", stored=True, indexed=True, fast=True)
    builder.add_integer_field("generation", stored=True, fast=True)
    builder.add_text_field("title", stored=False, tokenizer_name="en_stem")
    builder.add_text_field("text", stored=False, tokenizer_name="en_stem")
    return builder.build()


class SparseIndex:
    """A tantivy index in a folder; rows are passage store rows.

    Read-only, it writes nothing: a folder without an index reads as never committed (generation 0,
    no hits) instead of being created."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.index: tantivy.Index | None = None
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self.index = tantivy.Index(_schema(), path=str(self.path), reuse=True)
        elif self.path.is_dir() and tantivy.Index.exists(str(self.path)):
            try:
                self.index = tantivy.Index.open(str(self.path))
            except ValueError as exc:
                if "Lockfile" not in str(exc):
                    raise
                # tantivy writes a lock file to read, too: a read-only folder (a mount, a copy without write permission)
                raise IndexFolderError(f"{self.path}: BM25's index writes a lock file even to be read, and cannot here "
                                       f"({exc}): make the folder writable, or copy the index where it is") from None

    def searcher(self) -> tantivy.Searcher | None:
        """A snapshot of the last commit: later commits do not change what it sees (None: no index yet)."""
        if self.index is None:
            return None
        self.index.reload()
        return self.index.searcher()

    def generation(self, searcher: tantivy.Searcher | None = None) -> int:
        """The store generation this index reflects (0 when it was never committed)."""
        searcher = searcher or self.searcher()
        if searcher is None:
            return 0
        hits = searcher.search(tantivy.Query.term_query(self.index.schema, "row", MARKER_ROW), 1).hits
        if not hits:
            return 0
        return int(searcher.fast_field_values("generation", [hits[0][1]])[0])

    def apply(self, remove_rows: Iterable[int], add: Iterable[StoredPassage], generation: int) -> None:
        """Remove rows, add passages and record `generation`, in one atomic commit."""
        if self.readonly:
            raise PermissionError(f"{self.path}: this sparse index was opened read-only")
        writer = self.index.writer(heap_size=128_000_000, num_threads=1)
        try:
            # A writer killed mid-commit can leave files no commit refers to (a segment's .del at the next
            # opstamp); this commit would try to create the same name and fail, so clear them first.
            writer.garbage_collect_files()
            for row in remove_rows:
                writer.delete_documents_by_term("row", row)
            writer.delete_documents_by_term("row", MARKER_ROW)
            for p in add:
                writer.add_document(tantivy.Document(row=p.row, title=p.title, text=p.text))
            writer.add_document(tantivy.Document(row=MARKER_ROW, generation=generation))
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise

    def search(self, searcher: tantivy.Searcher | None, query: str, k: int) -> list[tuple[int, float]]:
        """(row, BM25 score) best first. The query is taken as plain words: no query syntax."""
        # Lowercased words only: user text like `AC/DC: "best of"` must not be read as query syntax,
        # and lowercasing stops words such as AND/OR/NOT acting as operators.
        words = _WORD.findall(query.lower())
        if searcher is None or not words or k <= 0:
            return []
        # Never deeper than the index: tantivy sets aside room for every one of the k results asked for.
        hits = searcher.search(self.index.parse_query(" ".join(words), _FIELDS), min(k, max(searcher.num_docs, 1))).hits
        # One call for all rows (a fast field), rather than one stored-document read per hit.
        rows = searcher.fast_field_values("row", [address for _, address in hits])
        return [(row, score) for row, (score, _) in zip(rows, hits)]
