"""`rag-serve`: answer questions from the command line (`ask`) or serve the HTTP API and web page (`run`)."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Sequence

from rag.command_line import run_command
from rag.fid_reader import is_fid_reader
from rag.models import GENERATIVE_READER
from rag.options import add_pipeline_arguments, pipeline_from_args
from rag.pipeline import MAX_K
from rag.span_reader import is_span_reader

MAX_WAIT_MS = 10_000  # a batch that waits longer for company than this only delays its first question
TOKEN_ENV = "RAG_SERVE_TOKEN"


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("rag-serve", _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-serve", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    ask = commands.add_parser("ask", help="answer one question with its sources",
                              description="Answer a question from the top-k passages of an index and print the sources.")
    add_pipeline_arguments(ask)
    ask.add_argument("--json", action="store_true", help="print one JSON object {question, answer, passages, edit, asked_as, beyond, answered_by, timings}")
    ask.add_argument("question", help="the question, quoted")
    ask.set_defaults(run=_ask)

    run = commands.add_parser("run", help="serve the HTTP API and the web page",
                              description="Serve questions and document updates over HTTP, with a web page at /. "
                                          "--k and --mode are the defaults of requests that do not say.")
    add_pipeline_arguments(run)
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    run.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    run.add_argument("--token", default=None,
                     help=f"require 'Authorization: Bearer TOKEN' for writes (default: ${TOKEN_ENV}; none: writes are open)")
    run.add_argument("--max-batch", type=int, default=16, help="most questions answered together (default 16)")
    run.add_argument("--max-wait-ms", type=float, default=5.0,
                     help=f"how long a question waits for others to batch with, up to {MAX_WAIT_MS:,} (default 5)")
    run.add_argument("--no-batching", action="store_true", help="answer questions one at a time (same as --max-batch 1)")
    run.add_argument("--max-queue", type=int, default=1024, help="questions waiting beyond this get 503 (default 1024)")
    run.add_argument("--max-k", type=int, default=MAX_K,
                     help=f"most passages a request may ask for, from 0 to {MAX_K} (default {MAX_K}): the reader reads them "
                          "all, and a question that asks for many holds up the ones batched after it")
    run.add_argument("--max-question-chars", type=int, default=2000, help="longest question taken (default 2000)")
    run.add_argument("--max-documents", type=int, default=1000, help="most documents in one upsert (default 1000)")
    run.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="largest request body (default 16 MiB)")
    run.add_argument("--adapters", type=Path, default=None,
                     help="folder of peft adapters that /ask may name (its `adapter` field, relative to this folder); "
                          "without it /ask takes no adapter")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="server log level")
    run.add_argument("--access-log", action="store_true", help="log every request")
    run.set_defaults(run=_run)
    return parser


def _ask(args: argparse.Namespace) -> int:
    pipeline = pipeline_from_args(args)
    answer = pipeline.ask(args.question, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
        return 0
    print(answer.text)
    if answer.edit is not None and answer.asked_as is not None:
        print(f"  (asked as {answer.asked_as!r}: the first hop from edit {answer.edit.id}: {answer.edit.fact})")
        if answer.answered_by is not None:
            print(f"  (answered from edit {answer.answered_by.id}: {answer.answered_by.fact})")
    elif answer.edit is not None and answer.beyond:
        print(f"  (read with edit {answer.edit.id} in view, from which the question asks a further step: {answer.edit.fact})")
    elif answer.edit is not None:
        print(f"  (from edit {answer.edit.id}, which takes precedence over the passages: {answer.edit.fact})")
    for n, hit in enumerate(answer.passages, 1):
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        read_from = ", the answer's source" if answer.source and hit.id == answer.source.passage else ""
        print(f"  [{n}] {hit.title} ({hit.id}, score {hit.score:.3f}{read_from}): {snippet}")
    print(f"  ({answer.timings['total_ms']:.0f} ms: retrieve {answer.timings['retrieve_ms']:.0f}, read {answer.timings['read_ms']:.0f})")
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here: `rag-serve ask` should not pay for the web stack.
    import uvicorn

    from serve.app import ServeSettings, create_app

    for name in ("max_batch", "max_queue", "max_question_chars", "max_documents", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:  # the resolver would take 99999 modulo 65536 without a word
        raise ValueError(f"--port must be from 0 to 65535 (0: a free one), got {args.port}")
    if not 0 <= args.max_wait_ms <= MAX_WAIT_MS:  # NaN fails this too; inf would keep a lone question waiting for ever
        raise ValueError(f"--max-wait-ms must be from 0 to {MAX_WAIT_MS:,}, got {args.max_wait_ms}")
    if not 0 <= args.max_k <= MAX_K:
        raise ValueError(f"--max-k must be from 0 to {MAX_K}, got {args.max_k}")
    if args.k is not None and args.max_k < args.k <= MAX_K:  # over MAX_K: the pipeline's options say so
        raise ValueError(f"--k {args.k} is over --max-k {args.max_k}: requests that do not say would be refused")
    if args.adapters is not None:
        if not args.adapters.is_dir():
            raise ValueError(f"--adapters {args.adapters}: {'a file, not a folder' if args.adapters.exists() else 'no such folder'} "
                             "(give the folder that holds the adapter folders)")
        if is_span_reader(args.reader) or is_fid_reader(args.reader):  # now, not on every /ask that names an adapter
            raise ValueError(f"--adapters: adapters chosen per question apply to the decoder-only reader, and --reader "
                             f"{args.reader} is not one: add --reader {GENERATIVE_READER}, or leave --adapters out")
    if args.token is not None and not args.token.strip():  # `--token "$UNSET"` would leave writes open without a word
        raise ValueError("--token is blank: give the token writes must carry, or leave --token out")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not _is_loopback(args.host):
        print(f"rag-serve: warning: listening on {args.host} without a token: anyone who can reach this port can change "
              f"the index. Pass --token or set ${TOKEN_ENV}.", file=sys.stderr)
    # Listen before loading the models, so a taken port fails in a second, not after a minute.
    sock = _listen(args.host, args.port)
    pipeline = pipeline_from_args(args, writable=True)
    _ = pipeline.index.encoder  # load the query encoder now rather than on the first question
    if args.k > args.max_k:  # the reader's default, now that it is loaded
        raise ValueError(f"the reader reads {args.k} passages by default, over --max-k {args.max_k}: pass --k too")
    settings = ServeSettings(token=token, k=args.k, mode=args.mode, max_k=args.max_k, max_batch=1 if args.no_batching else args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                             max_question_chars=args.max_question_chars, max_documents=args.max_documents,
                             max_body_bytes=args.max_body_bytes, adapter_root=args.adapters)
    url = _url(args.host, sock.getsockname()[1])

    def ready() -> None:
        print(f"rag-serve: serving {args.index} -- open {url} (API docs: {url}docs)", flush=True)

    app = create_app(pipeline, settings, on_ready=ready)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, timeout_graceful_shutdown=30)
    # uvicorn shuts down on SIGTERM and then raises it again: with the default handler back, the process ends by the
    # signal, as service managers expect of a stopped server, not as an interrupted command (run_command's 130).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a message that says why there cannot be one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
