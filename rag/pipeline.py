"""Question in, answer with its sources out: retrieve the top-k passages, then let the reader answer."""
from __future__ import annotations

import copy
import functools
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol, Sequence

import numpy as np

from indexer.edit_memory import Edit
from indexer.index import MODES, Index
from indexer.records import SearchHit, is_blank, text_list, valid_unicode
from rag.adapters import AdapterError, query_encoder_folder
from rag.answer_type import AnswerTypeClassifier, load_answer_types
from rag.editing import AnswerKinds, ClassifierScope, EditMatch, EditPassage, Scope, load_scope, match_edits
from rag.fid_reader import FiDReader, is_fid_reader
from rag.models import DEFAULT_READER, GENERATIVE_READER
from rag.reader import DecoderReader, PassageText
from rag.retriever import DualEncoder
from rag.span_reader import ReadAnswer, SpanReader, is_span_reader
from rag.two_hop import TwoHopDetector, load_two_hop

if TYPE_CHECKING:
    import torch

MAX_K = 100
# Passages read after the edit for a two-hop question whose first hop cannot be resolved (bench/edit_portability.py measured 3).
BEYOND_K = 3
TWO_HOP_KINDS = ("auto", "none")


@dataclass(frozen=True)
class Source:
    """Where an answer was read: the passage (its id) and the answer's characters in its text, [start, end)."""

    passage: str
    start: int
    end: int


@dataclass
class Answer:
    """An answer, the passages retrieved for it (best first), the edit it was read from when the
    question is in an edit's scope (the edit then takes precedence over the passages), and where the
    time went (milliseconds). `beyond`: the question asks beyond the edit (a second hop from the edit's answer),
    so the answer follows from the edit but is not the one it states. `asked_as`: the question the reader was
    asked instead, when the edit's answer could take the place of its first hop ("What is the capital of Iraq?");
    it is answered as any question is, and `edit` stays the one whose answer took that place; `answered_by` is the
    edit in the rewritten question's scope that answered it, if one did (another edit changed the capital of Iraq).
    `source`: the passage the answer was read out of and where in it, when the reader can tell (the span reader takes
    it from one passage; a generative reader writes it from them all) and the answer came from the passages at all."""

    question: str
    text: str
    passages: list[SearchHit]
    timings: dict[str, float] = field(default_factory=dict)
    edit: Edit | None = None
    asked_as: str | None = None
    beyond: bool = False
    answered_by: Edit | None = None
    source: Source | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "passages": [p.to_json() for p in self.passages],
            "edit": self.edit.to_json() if self.edit else None,
            "asked_as": self.asked_as,
            "beyond": self.beyond,
            "answered_by": self.answered_by.to_json() if self.answered_by else None,
            "source": asdict(self.source) if self.source else None,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def check_request(question: str, k: int, mode: str) -> None:
    """Reject what cannot be answered, with a message that says how to fix it."""
    if not isinstance(question, str) or is_blank(question):
        raise ValueError("empty question: ask something")
    valid_unicode(question, "the question")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= MAX_K:  # True is an int to Python, not a k
        raise ValueError(f"k must be an integer from 0 (closed book) to {MAX_K}, got {k!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


class Reader(Protocol):
    """What the pipeline needs of a reader: the decoder reader and the span reader both have it."""

    default_k: int  # passages it reads when a request does not say

    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[str]: ...


class Pipeline:
    """Retrieval-augmented answering over one index and its edit memory. k=0 answers closed-book,
    without passages (edits still apply when there is an index). `scope` None ignores edits; `two_hop`
    (rag/two_hop.py) finds questions that ask beyond an edit, which `edit_reader` reads (default: the
    pipeline's reader when it generates, else the default generative reader, loaded on first need); `answer_types`
    (rag/answer_type.py) keeps an edit that states a question to questions asking for the same kind of answer."""

    def __init__(self, index: Index | None, reader: Reader, retriever: DualEncoder | None = None, scope: Scope | None = None,
                 two_hop: TwoHopDetector | None = None, edit_reader: Reader | None = None,
                 answer_types: AnswerTypeClassifier | None = None) -> None:
        self.index = index
        self.reader = reader
        self.retriever = retriever
        self.scope = scope
        self.two_hop = two_hop
        self.answer_types = answer_types
        self.edit_reader = edit_reader
        # resolved adapter folder -> its query encoder, None (it has none) or why it cannot serve
        self._adapter_retrievers: dict[str, DualEncoder | str | None] = {}

    @classmethod
    def load(
        cls,
        index_dir: str | Path | None,
        reader: str | None = None,
        adapter: str | Path | None = None,
        device: str | None = None,
        constrain_to_passages: bool = False,
        scope: str = "auto",
        two_hop: str = "auto",
        writable: bool = False,
    ) -> Pipeline:
        """Open an index (read-only unless `writable`) and load the reader (a span reader folder, default the shipped
        one, a causal LM, or a folder of an encoder-decoder model for the FiD reader), the edit scope decider
        (`rag.editing.load_scope`) and, with the classifier decider and `two_hop` "auto", the shipped two-hop detector
        when it reads the index's encoder ("none": no two-hop reading); with any decider, the shipped answer-type
        classifier when it reads the index's encoder."""
        if two_hop not in TWO_HOP_KINDS:
            raise ValueError(f"unknown two-hop setting {two_hop!r}: choose one of {', '.join(TWO_HOP_KINDS)}")
        index = Index.open(index_dir, readonly=not writable, device=device or "cpu") if index_dir else None
        reader = reader or DEFAULT_READER
        if is_span_reader(reader):
            if adapter or constrain_to_passages:
                raise ValueError("--adapter and --constrain apply to a generative reader, not to a span reader (its answers are spans)")
            loaded: Reader = SpanReader.from_pretrained(reader, device=device)
        elif is_fid_reader(reader):
            if constrain_to_passages:
                raise ValueError("--constrain applies to the decoder-only reader, not to a Fusion-in-Decoder one")
            loaded = FiDReader(reader, adapter=adapter, device=device)
        else:
            loaded = DecoderReader(reader, adapter=adapter, device=device, constrain_to_passages=constrain_to_passages)
        decider = load_scope(scope, device=device, encoder=index.manifest.encoder if index is not None else None)
        # The detector's relation threshold is a probability of the scope classifier: no use with a cosine threshold.
        use_two_hop = index is not None and isinstance(decider, ClassifierScope) and two_hop == "auto"
        answer_types = (load_answer_types(index.manifest.encoder, dim=index.manifest.dim)
                        if index is not None and decider is not None else None)
        return cls(index, loaded, scope=decider,
                   two_hop=load_two_hop(index.manifest.encoder, dim=index.manifest.dim) if use_two_hop else None,
                   answer_types=answer_types)

    @functools.cached_property
    def _fact_tokenizer(self) -> Any:
        """A copy of the index encoder's tokenizer, which cuts long edit facts into windows (None without one). Only a
        question read from an edit loads it. A copy: a fast tokenizer's truncation is a setting of the object, and
        the index's writer encodes with it truncated on another thread (Index._chunk_tokenizer says the same)."""
        tokenizer = getattr(self.index.encoder, "tokenizer", None) if self.index is not None else None
        return copy.deepcopy(tokenizer) if tokenizer is not None else None

    def _answer_kinds(self) -> AnswerKinds | None:
        """The answer-type classifier over the index's encoder, for the edit router; None without one."""
        if self.answer_types is None or self.index is None:
            return None
        return functools.partial(self.answer_types.kinds, encode=self.index.encoder)

    def _adapted(self, adapter: str | Path | None) -> ContextManager[None]:
        """The reader with `adapter` active for a block (nullcontext without one); ValueError for a reader that takes none."""
        if adapter is None:
            return nullcontext()
        return self._decoder_reader().adapted(adapter)

    def _beyond_reader(self) -> Reader:
        """The reader of questions that ask beyond an edit: one that generates (a span reader can only copy the
        edit's first hop back out of it)."""
        if isinstance(self.reader, (DecoderReader, FiDReader)):
            return self.reader
        if self.edit_reader is None:
            device = getattr(self.reader, "device", None)
            try:
                self.edit_reader = DecoderReader(GENERATIVE_READER, device=str(device) if device is not None else None)
            except (OSError, RuntimeError, ValueError) as exc:
                # Once, not per request: the pipeline's own reader reads them instead (worse, but an answer).
                warnings.warn(f"the generative reader for two-hop questions did not load ({exc}); the pipeline's reader reads them")
                self.edit_reader = self.reader
        return self.edit_reader

    def _read(self, questions: list[str], contexts: list[list[SearchHit]]) -> list[ReadAnswer]:
        """The reader's answers, each with where in its passages it was read, when the reader can tell (the span reader)."""
        if isinstance(self.reader, SpanReader):
            return self.reader.answer(questions, contexts)
        return [ReadAnswer(text, None) for text in self.reader.generate(questions, contexts)]

    def _decoder_reader(self) -> DecoderReader:
        if not isinstance(self.reader, DecoderReader):
            kind = "a Fusion-in-Decoder reader (load it with its adapter instead)" if isinstance(self.reader, FiDReader) else "a span reader"
            raise AdapterError(f"adapters chosen per question apply to the decoder-only reader; this pipeline's reader is {kind}")
        return self.reader

    def retriever_for(self, adapter: str | Path | None) -> DualEncoder | None:
        """The query encoder that retrieves for `adapter`: the one trained with it (its `query_encoder` subfolder,
        loaded once), else the pipeline's (None: the index's own encoder). ValueError when it cannot serve."""
        if adapter is None:
            return self.retriever
        key = str(Path(adapter).resolve())
        if key not in self._adapter_retrievers:
            # A failure is kept too: a server must not reload a broken folder on every request that names it.
            self._adapter_retrievers[key] = self._load_adapter_retriever(adapter)
        loaded = self._adapter_retrievers[key]
        if isinstance(loaded, str):
            raise AdapterError(loaded)
        return loaded or self.retriever

    def load_query_encoder(self, folder: str | Path, device: str | torch.device) -> DualEncoder:
        """A trained query encoder (`rag-train joint` or `fewshot` export) for this pipeline's index: loaded on
        `device`, and checked to embed questions as wide as the index's vectors. ValueError says what is wrong."""
        try:
            encoder = DualEncoder(str(folder)).to(device).eval()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"query encoder {folder} does not load ({str(exc).splitlines()[0]})") from exc
        if self.index is not None and encoder.dim != self.index.manifest.dim:
            raise ValueError(f"query encoder {folder} is {encoder.dim}-d, the index {self.index.manifest.dim}-d")
        return encoder

    def _load_adapter_retriever(self, adapter: str | Path) -> DualEncoder | str | None:
        """The adapter's own query encoder, None when it has none, or what is wrong with it."""
        folder = query_encoder_folder(adapter)
        if folder is None:
            return None
        try:
            return self.load_query_encoder(folder, self._decoder_reader().device)
        except ValueError as exc:
            return f"adapter {adapter}: {exc}"

    @property
    def default_mode(self) -> str:
        """The search mode a question gets when it names none: the index's (hybrid, or dense without BM25)."""
        return self.index.default_mode if self.index is not None else "hybrid"

    def retrieve(self, questions: Sequence[str], k: int, mode: str | None = None, query_vectors: np.ndarray | None = None,
                 retriever: DualEncoder | None = None) -> list[list[SearchHit]]:
        """The top-k passages for each question (empty lists when k=0). `query_vectors`: the questions already encoded;
        `retriever`: the query encoder to encode them with (None: the pipeline's)."""
        if k == 0:
            return [[] for _ in questions]
        if self.index is None:
            raise ValueError("this pipeline has no index: open one, or ask closed-book with k=0")
        retriever = retriever or self.retriever
        mode = mode or self.default_mode
        if query_vectors is None and retriever is not None and mode != "sparse":
            query_vectors = retriever.encode_queries(list(questions))
        return self.index.search_many(list(questions), k=k, mode=mode, query_vectors=query_vectors)

    def ask(self, question: str, k: int | None = None, mode: str | None = None, adapter: str | Path | None = None) -> Answer:
        """Answer one question from its top-k passages (k None: the reader's default; mode None: `default_mode`)."""
        return self.ask_many([question], k=k, mode=mode, adapter=adapter)[0]

    def ask_many(self, questions: Sequence[str], k: int | None = None, mode: str | None = None,
                 adapter: str | Path | None = None, depth: int | None = None) -> list[Answer]:
        """Answer a batch of questions with one retrieval call and batched reading (k None: the reader's default).
        `adapter`: a peft adapter folder the generative reader answers with (loaded once, then kept beside the others);
        when it was trained with a query encoder, that encoder retrieves for it. `depth`: passages retrieved per
        question (None: k), of which the reader reads the top k; an answer lists them all (`rag-eval qa` measures
        recall@20 on them in the same search), except one read beyond an edit without a rewrite (below), which
        lists the min(k, BEYOND_K) passages it was read from.

        A question in an edit's scope gets the answer the edit states, or else is read from the edit's fact
        alone; the others are answered exactly as without edits. (Reading a stated answer back out of its
        fact could only lose it: the span reader cut "World War I" to "World War" on some zsRE edits.) A two-hop
        question that asks beyond an edit is asked again with the edit's answer in place of its first hop ("What
        is the capital of Iraq?") and answered as any question is: from another edit in the rewritten question's
        scope (one that changed the capital of Iraq), else as without edits; the answer's `edit` stays the one
        that resolved its first hop. One that cannot be rewritten so (no first hop phrase, or an edit that states
        only a fact) is read by the generative reader from the edit's fact followed by the passages retrieved for
        the question with the edit's answer, if it states one, appended (about the new answer, where the second
        hop is)."""
        questions = text_list(questions, "ask_many")
        k = self.reader.default_k if k is None else k
        mode = mode or self.default_mode
        depth = k if depth is None else depth
        for q in questions:
            check_request(q, k, mode)
        if not k <= depth <= MAX_K:
            raise ValueError(f"depth must be from k ({k}) to {MAX_K}, got {depth}")
        t0 = time.perf_counter()
        matches: list[EditMatch | None] = [None for _ in questions]
        vectors = None
        if self.index is not None and self.scope is not None and len(self.index.memory):
            # The memory holds vectors of the index's encoder; a dense search with no trained query encoder reuses them.
            vectors = self.index.encoder(list(questions))
            matches = match_edits(self.index.memory, self.scope, questions, vectors, two_hop=self.two_hop, answer_kinds=self._answer_kinds())
        edits = [m.edit if m else None for m in matches]
        beyond = [i for i, m in enumerate(matches) if m is not None and m.beyond]
        # What the reader is asked: a two-hop question with its first hop resolved (only a `beyond` match has
        # one), else the question.
        rewritten = [m.resolved if m is not None else None for m in matches]
        asked = [r or q for r, q in zip(rewritten, questions)]
        resolved = [i for i in beyond if rewritten[i]]
        unresolved = [i for i in beyond if not rewritten[i]]
        # The edit each question is answered from: its own unless it asks beyond it; a rewritten question is
        # matched once more, without two-hop detection (so never rewritten again) and never to the edit that
        # rewrote it (whose answer it now names), so that an edit of the second hop applies too.
        answering = [None if i in beyond else e for i, e in enumerate(edits)]
        resolved_vectors = None
        if resolved:
            resolved_vectors = self.index.encoder([asked[i] for i in resolved])
            again = match_edits(self.index.memory, self.scope, [asked[i] for i in resolved], resolved_vectors,
                                exclude=[edits[i] for i in resolved], answer_kinds=self._answer_kinds())
            for i, m in zip(resolved, again):
                answering[i] = m.edit if m is not None else None
        t1 = time.perf_counter()
        retriever = self.retriever_for(adapter) if depth else None
        reuse = retriever is None and mode != "sparse"
        # Each question is retrieved for once: as asked, or, unresolved, with the edit's answer appended.
        rest = [i for i in range(len(questions)) if i not in beyond]
        passages: list[list[SearchHit]] = [[] for _ in questions]
        searches = ((rest, [questions[i] for i in rest], depth, vectors[rest] if reuse and vectors is not None else None),
                    (resolved, [asked[i] for i in resolved], depth, resolved_vectors if reuse else None),
                    (unresolved, [f"{questions[i]} {edits[i].answer or ''}".strip() for i in unresolved], min(k, BEYOND_K), None))
        for group, queries, group_depth, group_vectors in searches:
            if group:
                for i, hits in zip(group, self.retrieve(queries, group_depth, mode, query_vectors=group_vectors, retriever=retriever)):
                    passages[i] = hits
        t2 = time.perf_counter()
        stated = {i for i, e in enumerate(answering) if e is not None and e.answer}
        texts = [answering[i].answer if i in stated else "" for i in range(len(questions))]
        plain = [i for i, e in enumerate(answering) if e is None and i not in unresolved]
        edited = [i for i, e in enumerate(answering) if e is not None and not e.answer]
        sources: list[Source | None] = [None for _ in questions]
        with self._adapted(adapter):
            if plain:
                for i, read in zip(plain, self._read([asked[i] for i in plain], [passages[i][:k] for i in plain])):
                    texts[i] = read.text
                    if read.passage is not None:
                        sources[i] = Source(passages[i][read.passage].id, read.start, read.end)
            if edited:
                contexts = [EditPassage.windows(answering[i], self._fact_tokenizer) for i in edited]
                for i, text in zip(edited, self.reader.generate([asked[i] for i in edited], contexts)):
                    texts[i] = text
            if unresolved:
                contexts = [[*EditPassage.windows(edits[i], self._fact_tokenizer), *passages[i]] for i in unresolved]
                for i, text in zip(unresolved, self._beyond_reader().generate([questions[i] for i in unresolved], contexts)):
                    texts[i] = text
        t3 = time.perf_counter()
        timings = {"edit_ms": (t1 - t0) * 1e3, "retrieve_ms": (t2 - t1) * 1e3, "read_ms": (t3 - t2) * 1e3, "total_ms": (t3 - t0) * 1e3}
        return [Answer(q, text, hits, dict(timings), edit, asked_as, i in beyond, answering[i] if asked_as else None, sources[i])
                for i, (q, text, hits, edit, asked_as) in enumerate(zip(questions, texts, passages, edits, rewritten))]
