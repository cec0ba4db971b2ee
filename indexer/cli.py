"""`rag-index`: build, update, search and inspect an index folder. Results are JSON on stdout."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

from indexer.corpus import CorpusError, FieldMap, read_documents
from indexer.dense import KINDS
from indexer.encoder import DEFAULT_ENCODER, DTYPES, TextEncoder, emulated_bf16_warning
from indexer.index import MODES, Index, build_index
from indexer.manifest import IndexFolderError
from indexer.names import unnamed_subject
from indexer.interrupt import interrupt_on_sigterm
from indexer.records import Document

# A change commits all at once: interrupted, the index holds the last change that committed.
INTERRUPTED = "the index holds its last complete change (each upsert or delete is all or nothing)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar too
    interrupt_on_sigterm()
    try:
        return args.run(args)
    except (CorpusError, IndexFolderError, ValueError, LookupError, RuntimeError, OSError) as exc:  # OSError: e.g. --out under a file
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"rag-index: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rag-index: interrupted; {args.interrupted}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-index", description=__doc__)
    parser.set_defaults(interrupted=INTERRUPTED)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="build a new index folder from corpus files",
                                description="Build a new index folder from corpus files (jsonl[.gz], DPR tsv, parquet, "
                                            "or a folder saved by `datasets`). The folder appears only when complete.")
    build.add_argument("--out", required=True, type=Path, help="index folder to create (must not exist)")
    build.add_argument("--corpus", required=True, nargs="+", metavar="FILE", help="corpus files")
    build.add_argument("--dense", choices=KINDS, default="flat",
                       help="FAISS index: flat (exact, default), ivf, ivfpq (trained, smaller/faster), hnsw (read-only)")
    build.add_argument("--no-sparse", action="store_true", help="skip the BM25 index (dense search only)")
    build.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name or path (default {DEFAULT_ENCODER})")
    build.add_argument("--chunk-words", type=int, default=None, help="words per passage, 0 = one passage per document (default 100)")
    build.add_argument("--chunk-overlap", type=int, default=0, help="words shared by consecutive passages (default 0)")
    build.add_argument("--chunk-tokens", type=int, default=0, help="chunk by N encoder tokens instead of words (RETRO-style); at most what the encoder reads (256 for the default)")
    build.add_argument("--device", default="auto",
                       help="device for encoding and search: cpu, cuda or auto (default: cuda when present, else cpu)")
    build.add_argument("--encoder-dtype", choices=tuple(DTYPES), default="float32",
                       help="precision of the encoder: float32 (default, exact) or bfloat16 (about 2.5x faster on a CPU "
                            "with avx512_bf16, or on a GPU; vectors within about 1e-2); the index keeps it, so later "
                            "updates and questions are encoded the same way")
    _add_reading_options(build)
    build.set_defaults(run=_build, interrupted="no index was made (the folder appears only when a build completes)")

    upsert = commands.add_parser("upsert", help="add or replace documents", description=
                                 "Add or replace documents in one atomic change. Only passages whose title or text changed are re-encoded.")
    upsert.add_argument("--index", required=True, type=Path)
    upsert.add_argument("files", nargs="+", metavar="FILE", help="corpus files with the new document versions")
    _add_reading_options(upsert)
    upsert.set_defaults(run=_upsert)

    delete = commands.add_parser("delete", help="delete documents", description="Delete documents in one atomic change.")
    delete.add_argument("--index", required=True, type=Path)
    delete.add_argument("--doc-ids", required=True, nargs="+", metavar="ID")
    delete.set_defaults(run=_delete)

    search = commands.add_parser("search", help="search passages", description=
                                 "Print the best passages as JSON lines {id, doc_id, title, text, score}. "
                                 "Without a query, read one query per line from standard input.")
    search.add_argument("--index", required=True, type=Path)
    search.add_argument("--k", type=int, default=5, help="passages per query (default 5)")
    search.add_argument("--mode", choices=MODES, default=None,
                        help="dense, sparse (BM25) or hybrid (default: hybrid, or dense on an index built with --no-sparse)")
    search.add_argument("--format", choices=("json", "text"), default="json", help="json lines (default) or text for people")
    search.add_argument("query", nargs="?", help="the query; omit to read queries from standard input")
    search.set_defaults(run=_search)

    stats = commands.add_parser("stats", help="counts, encoder and size of an index")
    stats.add_argument("--index", required=True, type=Path)
    stats.set_defaults(run=_stats)
    _add_edit_commands(commands)
    return parser


def _add_edit_commands(commands: argparse._SubParsersAction) -> None:
    edit = commands.add_parser("edit", help="add, list, revoke edits (facts that override the corpus)", description=
                               "The index's edit memory: stated facts that take precedence over the corpus for the questions "
                               "in their scope, live as soon as they are added, revocable. Each command prints JSON.")
    verbs = edit.add_subparsers(required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add an edit; prints it, with its id", description=
                           "Add an edit. It replaces --supersedes, and also the active edit that asks the same question, "
                           "if any: one question has one active edit. Prints the edit as JSON.")
    add.add_argument("--index", required=True, type=Path)
    add.add_argument("--fact", required=True, help='the fact, a sentence: "The Eiffel Tower is in Rome."')
    add.add_argument("--question", default=None, help="a question the fact answers")
    add.add_argument("--answer", default=None, help="its answer (needs --question)")
    add.add_argument("--subject", default=None, help="what the fact is about; when given, only questions that "
                     "name it (any case, accents ignored, plural or possessive allowed) can be in the edit's scope; a subject "
                     "that neither the fact nor the question names gets a warning on stderr")
    add.add_argument("--supersedes", default=None, metavar="ID", help="the edit this one replaces")
    add.set_defaults(run=_edit_add)
    listing = verbs.add_parser("list", help="list the active edits (JSON lines)")
    listing.add_argument("--index", required=True, type=Path)
    listing.add_argument("--all", action="store_true", help="also revoked and superseded edits")
    listing.set_defaults(run=_edit_list)
    revoke = verbs.add_parser("revoke", help="revoke an edit; questions about it get the answer they had before it")
    revoke.add_argument("--index", required=True, type=Path)
    revoke.add_argument("id", help="edit id, e.g. e12")
    revoke.set_defaults(run=_edit_revoke)
    history = verbs.add_parser("history", help="an edit with what it replaced and what replaced it (JSON lines)")
    history.add_argument("--index", required=True, type=Path)
    history.add_argument("id", help="edit id, e.g. e12")
    history.set_defaults(run=_edit_history)


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fields", default="", metavar="SPEC",
                        help="map field names, e.g. id=docid,text=contents (default id, title, text)")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="on a malformed record: stop with nothing changed (default), or skip it and report it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _documents(files: Sequence[str], args: argparse.Namespace, skipped: list[str]) -> Iterator[Document]:
    """Documents of all files; an id seen in an earlier file is an error (or skipped)."""
    fields = FieldMap.parse(args.fields)
    # Every path is checked here, before the encoder loads or anything is written.
    readers = [(f, read_documents(f, fields, args.on_error, skipped)) for f in files]

    def documents() -> Iterator[Document]:
        first_seen: dict[str, str] = {}
        for name, docs in readers:
            for doc in docs:
                if doc.id in first_seen:
                    message = f"{name}: duplicate id {doc.id!r} (first seen in {first_seen[doc.id]})"
                    if args.on_error == "stop":
                        raise CorpusError(message + ". Remove one, or pass --on-error skip.")
                    skipped.append(message)
                    continue
                first_seen[doc.id] = name
                yield doc

    return documents()


def _report(report: dict, skipped: list[str]) -> None:
    for message in skipped[:20]:
        print(f"rag-index: skipped {message}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"rag-index: ... and {len(skipped) - 20} more skipped records", file=sys.stderr)
    print(json.dumps({**report, "skipped": len(skipped)}))


def _build(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise IndexFolderError(f"{args.out} already exists: choose a new --out, or use `rag-index upsert` to change it")
    if args.chunk_tokens and args.chunk_words is not None:  # one of them would be ignored without a word
        raise ValueError("give --chunk-words or --chunk-tokens, not both: a passage is cut by words or by encoder tokens")
    skipped: list[str] = []
    documents = _documents(args.corpus, args, skipped)
    if args.encoder_dtype == "bfloat16" and (warning := emulated_bf16_warning("--encoder-dtype bfloat16", args.device)):
        print(f"rag-index: warning: {warning}", file=sys.stderr)
    encoder = TextEncoder(args.encoder, device=args.device, dtype=args.encoder_dtype)
    chunk_words = 100 if args.chunk_words is None else args.chunk_words
    report = build_index(args.out, documents, encoder, progress=not args.quiet, dense=args.dense, sparse=not args.no_sparse,
                         chunk_words=chunk_words, chunk_overlap=args.chunk_overlap, chunk_tokens=args.chunk_tokens, device=args.device)
    _report({"index": str(args.out), **report.to_json()}, skipped)
    if not report.documents_added:
        print(f"rag-index: warning: {args.out} holds no documents: no record could be read; `rag-index upsert` can add some",
              file=sys.stderr)
    return 0


def _upsert(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    documents = _documents(args.files, args, skipped)
    with Index.open(args.index) as index:
        report = index.upsert(documents, progress=not args.quiet)
    _report(report.to_json(), skipped)
    return 0


def _delete(args: argparse.Namespace) -> int:
    with Index.open(args.index) as index:
        print(json.dumps(index.delete(args.doc_ids).to_json()))
    return 0


def _search(args: argparse.Namespace) -> int:
    with Index.open(args.index, readonly=True) as index:
        interactive = args.query is None and sys.stdin.isatty()
        queries = [args.query] if args.query is not None else _stdin_queries(interactive)
        for query in queries:
            for hit in index.search(query, k=args.k, mode=args.mode):
                if args.format == "json":
                    print(json.dumps(hit.to_json(), ensure_ascii=False))
                else:
                    print(f"[{hit.score:.3f}] {hit.title} ({hit.id})\n    {hit.text[:300]}\n")
            sys.stdout.flush()
    return 0


def _stdin_queries(interactive: bool) -> Iterator[str]:
    while True:
        if interactive:
            print("query> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def _stats(args: argparse.Namespace) -> int:
    with Index.open(args.index, readonly=True) as index:
        print(json.dumps(index.stats()))
    return 0


def _edit_add(args: argparse.Namespace) -> int:
    memory = Index.open_memory(args.index)
    edit = memory.add(args.fact, question=args.question, answer=args.answer, subject=args.subject, supersedes=args.supersedes)
    print(json.dumps(edit.to_json(), ensure_ascii=False))
    warning = unnamed_subject(edit.fact, edit.question, edit.subject)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _edit_list(args: argparse.Namespace) -> int:
    for edit in Index.open_memory(args.index, readonly=True).list(include_inactive=args.all):
        print(json.dumps(edit.to_json(), ensure_ascii=False))
    return 0


def _edit_revoke(args: argparse.Namespace) -> int:
    print(json.dumps(Index.open_memory(args.index).revoke(args.id).to_json(), ensure_ascii=False))
    return 0


def _edit_history(args: argparse.Namespace) -> int:
    for edit in Index.open_memory(args.index, readonly=True).history(args.id):
        print(json.dumps(edit.to_json(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
