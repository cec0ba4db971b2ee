"""Read corpus files (JSON lines, DPR-style TSV, Parquet, `datasets` folders) into `Document`s, lazily."""
from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields as dataclass_fields
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from indexer.records import Document, document_fields_problem, document_id_problem, is_blank

SUFFIXES = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".ndjson.gz": "jsonl",
    ".json.gz": "jsonl",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".parquet": "parquet",
}
BATCH_SIZE = 1024


class CorpusError(ValueError):
    """Bad corpus input; the message names the file (and line or row) and says how to fix it."""


class _BadRecord(Exception):
    """A problem with one record: fatal or skipped, depending on `on_error`."""


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold the document id, title and text."""

    id: str = "id"
    title: str = "title"
    text: str = "text"

    @classmethod
    def parse(cls, spec: str) -> FieldMap:
        """Parse a CLI spec such as `"id=docid,text=contents"`; keys not given keep their defaults."""
        keys = [f.name for f in dataclass_fields(cls)]
        mapping: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, name = (s.strip() for s in item.partition("="))
            if not sep or not name:
                raise CorpusError(f"bad field mapping {item!r} in {spec!r}: expected KEY=FIELD, e.g. 'id=docid,text=contents'.")
            if key not in keys:
                raise CorpusError(f"unknown key {key!r} in field mapping {spec!r}: the keys are {', '.join(keys)}, e.g. 'id=docid,text=contents'.")
            if key in mapping:  # else the last would win without a word
                raise CorpusError(f"{key} is mapped twice in {spec!r} ({mapping[key]!r} and {name!r}): map it once")
            mapping[key] = name
        return cls(**mapping)


def read_documents(
    path: str | Path,
    fields: FieldMap = FieldMap(),
    on_error: Literal["stop", "skip"] = "stop",
    skipped: list[str] | None = None,
) -> Iterator[Document]:
    """Iterate over the documents of a corpus file, format chosen by its name (or a `save_to_disk` folder).

    The path and format are checked now, so a bad path fails before any work; records are read
    lazily. A bad record raises `CorpusError` with `on_error="stop"`; with `"skip"` it is skipped and
    its message appended to `skipped` (if given). Unreadable or corrupt files always raise.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory.")
    fmt = _detect_format(path)
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    return _read(path, fmt, fields, on_error, skipped)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "datasets"
    name = path.name.lower()
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise CorpusError(
        f"{path}: unsupported corpus format. Supported: {', '.join(SUFFIXES)} files, "
        "or a directory written by datasets' save_to_disk."
    )


def _read(path: Path, fmt: str, fields: FieldMap, on_error: str, skipped: list[str] | None) -> Iterator[Document]:
    unit = "line" if fmt in ("jsonl", "tsv") else "row"
    first_seen: dict[str, int] = {}
    n = 0
    try:
        for n, record in _records(path, fmt, fields):
            try:
                doc = _to_document(record, fields)
                if doc.id in first_seen:
                    raise _BadRecord(f"duplicate id {doc.id!r} (first seen at {unit} {first_seen[doc.id]})")
            except _BadRecord as e:
                where = _where(path, unit, n)
                if on_error == "stop":
                    raise CorpusError(f"{where}: {e}. Fix the {unit} or pass --on-error skip.") from None
                if skipped is not None:
                    skipped.append(f"{where}: {e}")
                continue
            first_seen[doc.id] = n
            yield doc
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error, pa.ArrowException) as e:
        where = _where(path, unit, n + 1) if n else str(path)
        raise CorpusError(f"{where}: cannot read the file ({type(e).__name__}: {e}). Check that it is a complete, valid {fmt} corpus.") from None


def _where(path: Path, unit: str, n: int) -> str:
    return f"{path}:{n}" if unit == "line" else f"{path}: row {n}"


def _to_document(record: dict[str, Any] | _BadRecord, fields: FieldMap) -> Document:
    if isinstance(record, _BadRecord):
        raise record
    if not isinstance(record, dict):
        raise _BadRecord(f"record is not a JSON object (got {type(record).__name__})")
    raw_id, title, text = record.get(fields.id), record.get(fields.title), record.get(fields.text)
    # Numbers name documents in many corpora (DPR tsv); a list or an object stringified would be an id nobody can type.
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise _BadRecord(f"id field {fields.id!r} is a {type(raw_id).__name__}, not a string or an integer")
    if title is not None and not isinstance(title, str):
        raise _BadRecord(f"title field {fields.title!r} is a {type(title).__name__}, not a string")
    # Not stripped: " d1 " would quietly overwrite d1, which `rag-index delete` and the server then cannot name as given.
    doc_id = "" if raw_id is None else str(raw_id)
    if not doc_id.strip():
        raise _BadRecord(f"missing id (field {fields.id!r}; map another field with --fields id=NAME)")
    problem = document_id_problem(doc_id)
    if problem:
        raise _BadRecord(problem)
    if text is not None and not isinstance(text, str):
        raise _BadRecord(f"text field {fields.text!r} is a {type(text).__name__}, not a string")
    if is_blank(text or ""):
        raise _BadRecord(f"missing or empty text (field {fields.text!r}; map another field with --fields text=NAME)")
    meta = {k: v for k, v in record.items() if k not in (fields.id, fields.title, fields.text)}
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise _BadRecord(f"extra fields are not JSON-serialisable ({e})") from None
    try:  # JSON may spell a lone surrogate (\ud800); neither SQLite nor a tokenizer takes one
        json.dumps([doc_id, title, text, meta], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise _BadRecord(f"not valid Unicode: an unpaired surrogate {e.object[e.start]!a}; fix or drop the record") from None
    problem = document_fields_problem(title or "", meta)
    if problem:
        raise _BadRecord(problem)
    return Document(id=doc_id, title="" if title is None else str(title), text=text.strip(), meta=meta)


def _records(path: Path, fmt: str, fields: FieldMap) -> Iterator[tuple[int, dict[str, Any] | _BadRecord]]:
    """Yield (1-based line or row number, record); per-record problems come back as `_BadRecord` values."""
    if fmt == "jsonl":
        yield from _jsonl_records(path)
    elif fmt == "tsv":
        yield from _tsv_records(path, fields)
    elif fmt == "parquet":
        with pq.ParquetFile(path) as f:
            yield from _arrow_records(f.iter_batches(batch_size=BATCH_SIZE))
    else:
        yield from _arrow_records(_load_dataset(path).with_format("arrow").iter(batch_size=BATCH_SIZE))


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | _BadRecord]]:
    with _open_binary(path) as f:
        for n, raw in enumerate(f, start=1):
            # Decode per line so a bad byte is reported (and skippable) at its line.
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, _BadRecord(f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record = _BadRecord(f"invalid JSON ({e.msg})")
            except RecursionError:
                record = _BadRecord("invalid JSON (arrays or objects nested too deeply)")
            except ValueError as e:  # e.g. an integer of more than 4,300 digits
                record = _BadRecord(f"invalid JSON ({str(e).split(';')[0]})")
            yield n, record


def _tsv_records(path: Path, fields: FieldMap) -> Iterator[tuple[int, dict[str, Any] | _BadRecord]]:
    with io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return
        for key in ("id", "text"):
            if getattr(fields, key) not in header:
                raise CorpusError(
                    f"{path}:1: the header has no {getattr(fields, key)!r} column (columns: {', '.join(header)}). "
                    f"Map the {key} column with --fields {key}=NAME."
                )
        start = reader.line_num + 1
        for row in reader:
            # A quoted field may span lines: report the line where the record starts.
            n, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                yield n, _BadRecord(f"expected {len(header)} tab-separated columns as in the header, got {len(row)}")
            else:
                yield n, dict(zip(header, row))


def _arrow_records(batches: Iterator[pa.RecordBatch | pa.Table]) -> Iterator[tuple[int, dict[str, Any]]]:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _load_dataset(path: Path) -> Any:
    # Imported here: `datasets` is slow to import and only this format needs it.
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) == 1:
            return next(iter(ds.values()))
        if "train" not in ds:
            raise CorpusError(f"{path}: the dataset has several splits ({', '.join(ds)}) and none is 'train'; save one split.")
        return ds["train"]
    return ds
