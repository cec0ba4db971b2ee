"""The HTTP API and the web page: ask questions, add, update and delete documents, state and revoke
edits, watch the index.

Reads (`/ask`, `GET /documents/...`, `GET /edits...`, `/stats`, `/health`, `/metrics`) are open; writes
need `Authorization: Bearer <token>` when the server has a token. Questions go through the micro-batcher
(serve/batching.py); writes (documents and edits) run one at a time in their own thread. The index
publishes a change by swapping its snapshot, so a question never waits for a write and never sees half
of one. Routes are grouped by area: answering, documents, edits, operations; the bodies they take and give
are in serve/schemas.py.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from indexer.edit_memory import EditNotFound
from indexer.index import ChangeReport, Index
from indexer.manifest import IndexFolderError
from indexer.records import Document, has_control_characters
from rag.adapters import check_adapter_folder
from rag.pipeline import MAX_K, Pipeline, check_request
from serve.batching import MicroBatcher, Overloaded
from serve.body import BodyGuard
from serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from serve.schemas import (ERRORS, AskRequest, AskResponse, DocumentOut, EditDetail, EditIn, EditList, EditOut, PassageOut, SourceOut,
                           UpsertRequest)

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("rag.serve")


@dataclass
class ServeSettings:
    """What the server allows and how it batches; `rag-serve run` sets these from its options."""

    token: str | None = None
    k: int = 5
    max_k: int = MAX_K  # the most passages a request may ask for
    mode: str = "hybrid"
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_question_chars: int = 2000
    max_documents: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    adapter_root: Path | None = None  # /ask may name adapter folders inside it; None: /ask takes no adapter


# -- the app ---------------------------------------------------------------------------------------

MAX_ADAPTER_CHARS = 255


def _adapter_folder(name: str, root: Path | None) -> Path:
    """The adapter folder an /ask `adapter` names: inside the server's adapter root, never elsewhere on its disk. Errors
    name the adapter as the client wrote it, not the server's folders."""
    if root is None:
        raise ValueError("this server takes no adapters: start it with --adapters DIR to serve the adapters in DIR")
    if not name.strip() or len(name) > MAX_ADAPTER_CHARS or has_control_characters(name):
        raise ValueError(f"adapter {name[:80]!r}: must be a folder name inside the server's adapter folder, 1 to "
                         f"{MAX_ADAPTER_CHARS} characters, without control characters")
    folder = (root / name).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise ValueError(f"adapter {name!r}: must name a folder inside the server's adapter folder")
    try:
        return check_adapter_folder(folder, label=repr(name))
    except OSError as exc:  # e.g. a path component over the file system's name limit
        raise ValueError(f"adapter {name[:80]!r}: not a usable folder name ({exc.strerror})") from exc


def shutting_down(advice: str) -> HTTPException:
    """The 503 for a request uvicorn cancels: those still running when its graceful shutdown times out are, before
    the app's own shutdown can fail them; uncaught, the client gets a bare 500."""
    return HTTPException(503, f"the server is shutting down: {advice}", headers={"Retry-After": "1"})


class Writes:
    """Changes (documents and edits) run one at a time in a thread of their own, in the order they came, so a write
    never blocks the event loop and two never interleave. Their errors come back as HTTP errors."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-write")

    async def run(self, fn: Callable[..., Any], *args: Any, missing: str | None = None) -> Any:
        """`fn(*args)` after the changes before it. 409 for the index folder, 422 for what the request asks
        (ValueError), 404 with the message `missing` for what it names that does not exist (LookupError; a 500
        where no `missing` is given)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except asyncio.CancelledError:  # see shutting_down; the thread goes on, and the server waits for it
            raise shutting_down("the change may still have been made: look before making it again") from None
        except IndexFolderError as exc:
            raise HTTPException(409, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        except LookupError as exc:
            if missing is None:
                raise
            raise HTTPException(404, missing) from exc

    def close(self) -> None:
        """Wait for a write under way to finish, so its client's change is not cut short."""
        self._thread.shutdown(wait=True)


def create_app(pipeline: Pipeline, settings: ServeSettings | None = None,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The server over `pipeline`, whose index must be writable. `on_ready` runs once it can take requests."""
    settings = settings or ServeSettings()
    index = pipeline.index
    if index is None or index.readonly:
        raise ValueError("the server needs an index opened for writing (Index.open(path))")
    index.check_mode(settings.mode)
    batcher = MicroBatcher(lambda questions, k, mode, adapter: pipeline.ask_many(questions, k=k, mode=mode, adapter=adapter),
                           max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue)
    metrics = Metrics(index.stats, lambda: batcher.pending)
    batcher.observe = metrics.observe_batch
    writes = Writes()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            if on_ready is not None:
                on_ready()
            yield
        finally:
            await batcher.stop()
            writes.close()

    app = FastAPI(title="rag-serve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Retrieval-augmented question answering over an index you can update while it serves.")
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app)
    guarded = [Depends(_token_check(settings.token))]
    for router in (_answering_routes(index, settings, batcher), _document_routes(index, settings, writes, guarded),
                   _edit_routes(index, writes, guarded), _operation_routes(pipeline, index, settings, batcher, metrics)):
        app.include_router(router)
    _add_pages(app)
    return app


def _answering_routes(index: Index, settings: ServeSettings, batcher: MicroBatcher) -> APIRouter:
    """POST /ask."""
    answering = APIRouter(tags=["answering"])

    @answering.post("/ask", response_model=AskResponse, responses=ERRORS)
    async def ask(body: AskRequest) -> AskResponse:
        """Answer a question from the top-k passages of the index, or from the edit it is about if any."""
        if len(body.question) > settings.max_question_chars:
            raise HTTPException(413, f"the question is {len(body.question):,} characters long; this server "
                                     f"takes at most {settings.max_question_chars:,} (--max-question-chars)")
        k = settings.k if body.k is None else body.k
        if k > settings.max_k:
            raise HTTPException(422, f"k is {k}; this server reads at most {settings.max_k} passages a question (--max-k)")
        mode = body.mode or settings.mode
        try:
            check_request(body.question, k, mode)
            index.check_mode(mode)
            adapter = None if body.adapter is None else _adapter_folder(body.adapter, settings.adapter_root)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        start = time.perf_counter()
        try:
            answered = await batcher.ask(body.question, k, mode, None if adapter is None else str(adapter))
        except asyncio.CancelledError:
            raise shutting_down("ask again once it is back") from None
        except Overloaded as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
        except ValueError as exc:  # what the request asks cannot be done, e.g. an adapter that does not fit the reader
            # The reader names the adapter by its folder: the client named it otherwise, and the server's disk is its own.
            message = str(exc) if adapter is None else str(exc).replace(str(adapter), repr(body.adapter))
            raise HTTPException(422, message) from exc
        answer = answered.answer
        timings = {**answer.timings, "queue_ms": answered.queue_ms, "server_ms": (time.perf_counter() - start) * 1e3}
        return AskResponse(question=answer.question, answer=answer.text,
                           passages=[PassageOut(**p.to_json()) for p in answer.passages],
                           edit=None if answer.edit is None else EditOut.of(answer.edit), asked_as=answer.asked_as,
                           beyond=answer.beyond, answered_by=None if answer.answered_by is None else EditOut.of(answer.answered_by),
                           source=None if answer.source is None else SourceOut(**asdict(answer.source)),
                           timings={name: round(ms, 2) for name, ms in timings.items()}, batch_size=answered.batch_size)

    return answering


def _token_check(token: str | None) -> Callable[..., None]:
    """The dependency that guards writes: with a `token`, a request needs the header `Authorization: Bearer <token>`."""

    def require_token(authorization: Annotated[str | None, Header(description="Bearer <token>")] = None) -> None:
        if token is None:
            return
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes the client sent. Only HTTP's spaces
        # and tabs are stripped: str.strip() would also take \x85 and \xa0, bytes of UTF-8 letters (à is C3 A0).
        scheme, _, credentials = (authorization or "").strip(" \t").partition(" ")
        # The scheme's case does not matter (RFC 9110).
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip(" \t").encode("latin-1"), token.encode()):
            raise HTTPException(401, "writes need the header Authorization: Bearer <token> with this server's token",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def _document_routes(index: Index, settings: ServeSettings, writes: Writes, guarded: list[Any]) -> APIRouter:
    """POST /documents (guarded), GET and DELETE (guarded) /documents/{id}."""
    documents = APIRouter(prefix="/documents", tags=["documents"])

    @documents.post("", response_model=ChangeReport, responses=ERRORS, dependencies=guarded)
    async def upsert(body: UpsertRequest) -> ChangeReport:
        """Add or replace a batch of documents in one atomic change; acknowledged once durable."""
        if len(body.documents) > settings.max_documents:
            raise HTTPException(413, f"{len(body.documents):,} documents in one batch; this server takes at most "
                                     f"{settings.max_documents:,} (--max-documents): send several batches")
        docs = [Document(d.id, d.title, d.text, dict(d.model_extra or {})) for d in body.documents]
        return await writes.run(index.upsert, docs)

    @documents.get("/{doc_id:path}", response_model=DocumentOut, responses=ERRORS)
    def get_document(doc_id: str) -> DocumentOut:
        """A document as the index serves it now."""
        doc = index.document(doc_id)
        if doc is None:
            raise HTTPException(404, f"no document with id {doc_id!r}")
        return DocumentOut(id=doc.doc_id, title=doc.title, text=doc.text, meta=doc.meta, version=doc.version,
                           passage_ids=doc.passage_ids)

    @documents.delete("/{doc_id:path}", response_model=ChangeReport, responses=ERRORS, dependencies=guarded)
    async def delete_document(doc_id: str) -> ChangeReport:
        """Delete a document and its passages in one atomic change."""
        return await writes.run(index.delete, [doc_id], missing=f"no document with id {doc_id!r}; nothing was deleted")

    return documents


def _edit_routes(index: Index, writes: Writes, guarded: list[Any]) -> APIRouter:
    """POST /edits (guarded), GET /edits, GET and DELETE (guarded) /edits/{id}."""
    edits = APIRouter(prefix="/edits", tags=["edits"])

    def no_edit(edit_id: str) -> str:
        return f"no edit {edit_id!r}: edit ids look like e1, e2, ...; GET /edits?all=true lists every edit"

    @edits.post("", response_model=EditOut, responses=ERRORS, dependencies=guarded)
    async def add_edit(body: EditIn) -> EditOut:
        """State a fact: questions about it are answered from it, ahead of the documents, as soon as this returns.
        It replaces `supersedes` (which must be active: else 422), and also the active edit that asks the same
        question, if any: one question has one active edit. Acknowledged once durable. Answering uses edits only
        when the server has a scope decider (`scope` in /health)."""
        missing = f"no edit {body.supersedes!r} to supersede: GET /edits lists the active ones"
        return EditOut.of(await writes.run(index.memory.add, body.fact, body.question, body.answer, body.subject,
                                           body.supersedes, missing=missing))

    @edits.get("", response_model=EditList, responses=ERRORS)
    def list_edits(every: Annotated[bool, Query(alias="all", description="also revoked and superseded ones")] = False) -> EditList:
        """The active edits, oldest first (with all=true, every edit ever made)."""
        return EditList(edits=[EditOut.of(e) for e in index.memory.list(include_inactive=every)])

    @edits.get("/{edit_id}", response_model=EditDetail, responses=ERRORS)
    def get_edit(edit_id: str) -> EditDetail:
        """An edit, active or not, with its history: the edits it replaced and those that replaced it."""
        try:
            history = [EditOut.of(e) for e in index.memory.history(edit_id)]
        except EditNotFound as exc:
            raise HTTPException(404, no_edit(edit_id)) from exc
        edit = next(e for e in history if e.id == edit_id)
        return EditDetail(**edit.model_dump(), history=history)

    @edits.delete("/{edit_id}", response_model=EditOut, responses=ERRORS, dependencies=guarded)
    async def revoke_edit(edit_id: str) -> EditOut:
        """Revoke an edit: questions about it are answered as before it was made (or from the edit it had
        replaced). Returns the revoked edit; 404 for an unknown id, 422 for an edit already revoked."""
        return EditOut.of(await writes.run(index.memory.revoke, edit_id, missing=no_edit(edit_id)))

    return edits


def _operation_routes(pipeline: Pipeline, index: Index, settings: ServeSettings, batcher: MicroBatcher, metrics: Metrics) -> APIRouter:
    """GET /health (and HEAD), /stats, /metrics."""
    operations = APIRouter(tags=["operations"])

    @operations.get("/health")
    def health() -> dict[str, Any]:  # not async: reading the generation may first follow another process's commit
        """Liveness, the generation being served, the k and mode a question gets when it does not say, the edit scope
        decider (null: edits are not used in answers) and how questions are batched."""
        return {"status": "ok", "generation": index.generation, "k": settings.k, "mode": settings.mode,
                "reader": getattr(pipeline.reader, "name", "?"),
                "scope": getattr(pipeline.scope, "name", None), "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms, "queued": batcher.pending}

    operations.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # for probes that only HEAD

    @operations.get("/stats")
    def stats() -> dict[str, Any]:
        """Passages, documents, deleted versions, edits (active; ever made), encoder, generation and bytes of the index."""
        return index.stats()

    @operations.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    def prometheus() -> Response:
        """Metrics in Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return operations


def _add_pages(app: FastAPI) -> None:
    """The web page at /, its files, and the OpenAPI page with Swagger UI served from a package, not a CDN."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="rag-serve API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is `{"error": message}`; a client's mistake is a 4xx that names it, never a 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for error in errors:
            if error["type"] == "json_invalid":
                # Python's JSON messages end with " at" ("Invalid control character at"): the offset follows.
                reason = error.get("ctx", {}).get("error", "malformed").removesuffix(" at")
                return JSONResponse({"error": f"the request body is not valid JSON: {reason} at offset {error['loc'][-1]}"},
                                    status_code=400)
        message = "; ".join(_describe(error) for error in errors)
        details = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse({"error": message, "details": jsonable_encoder(details)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        # FastAPI answers a body its JSON parser gave up on (not a syntax error) with a bare "error parsing the body".
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            message = "the request body is not JSON this server reads: arrays or objects nested too deeply"
        elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            message = f"the request body is not JSON this server reads: {str(exc.__cause__).split(';')[0]}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): {exc}"}, status_code=500)


def _describe(error: dict[str, Any]) -> str:
    """`body.documents.0.text: String should have at least 1 character` for a pydantic error."""
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"
