"""Extractive reader: a span head on the MiniLM encoder, as in DPR's reader.

Each (question, passage) pair is encoded as `[CLS] question [SEP] title [SEP] text [SEP]`. A linear
head gives start and end logits per token and a passage-relevance logit from [CLS]. Answers are
spans of the passage *text* only (never of the question or title), read back from the original
string through the tokenizer's offset mapping, so an answer is always a substring of a passage.

Training (trainer/span_training.py) puts the span on the gold passage and the no-answer target on
[CLS] for retrieved passages without the answer, so scores can be compared across passages. How
the best passage is chosen is the `scoring` setting, picked on held-out training questions:
- "relevance": the passage with the highest relevance logit, then its best span (DPR);
- "span": the highest raw start + end logit over all passages;
- "span-null": the highest span logit minus that passage's no-answer logit (SQuAD 2.0 style);
- "joint": relevance logit + log p(span | passage), i.e. log p(passage) + log p(span | passage);
- "joint-vote": the joint probabilities (softmax over passages) summed over passages that give the same
  answer text (case and spacing ignored): an answer several passages agree on wins.

A saved reader is a folder with `span_reader.json` (the marker: kind "span-reader"), `head.safetensors`
and `encoder/` (encoder weights, float16 on disk to halve the size, float32 once loaded, plus the tokenizer).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from indexer.encoder import DEFAULT_ENCODER, load_encoder_model
from rag.reader import PassageText, pick_device

MARKER_FILE = "span_reader.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
KIND = "span-reader"
FORMAT_VERSION = 1
SCORINGS = ("relevance", "span", "span-null", "joint", "joint-vote")
# Pairs per forward pass at inference: bounds memory, not results (every pair is scored alone).
INFERENCE_BATCH = 32


def is_span_reader(path: str | Path) -> bool:
    """Whether `path` is a folder saved by `SpanReader.save_pretrained` (it holds the marker file)."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("kind") == KIND
    except (OSError, json.JSONDecodeError):
        return False


@dataclass
class SpanReaderConfig:
    """What a saved span reader needs besides its weights; written to `span_reader.json`."""

    base_model: str = DEFAULT_ENCODER
    max_length: int = 256
    max_answer_tokens: int = 15
    scoring: str = "joint"
    k: int = 5  # passages read per question when a request does not say (training picks it on dev)
    kind: str = KIND
    format_version: int = FORMAT_VERSION

    def check(self) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.kind != KIND:
            raise ValueError(f"not a span reader config (kind {self.kind!r}, expected {KIND!r})")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"span reader format {self.format_version} is newer than this code reads ({FORMAT_VERSION})")
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}: choose one of {', '.join(SCORINGS)}")
        if not 32 <= self.max_length <= 512:
            raise ValueError(f"max_length must be from 32 to 512 tokens, got {self.max_length}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be at least 1, got {self.max_answer_tokens}")


@dataclass
class EncodedPairs:
    """A tokenised batch of (question, passage) pairs and what is needed to map tokens back to text.

    `context` marks the tokens that may be part of an answer (passage text, not question or title);
    `offsets` are character offsets into the passage text (valid where `context` is true).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    context: torch.Tensor
    offsets: torch.Tensor

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device),
                "token_type_ids": self.token_type_ids.to(device)}


@dataclass
class PassageSpan:
    """The best span of one passage and the scores `scoring` chooses among passages with."""

    passage: int
    start_char: int
    end_char: int
    span_logit: float  # start + end logit of the span; -inf when the passage has no answerable token
    null_logit: float  # start + end logit of [CLS] (no answer here)
    span_logprob: float  # log p(span | passage), no-answer included in the normalisation
    relevance: float

    def score(self, scoring: str) -> float:
        """This passage's score under one of SCORINGS (higher is better)."""
        if scoring == "relevance":
            return self.relevance
        if scoring == "span":
            return self.span_logit
        if scoring == "span-null":
            return self.span_logit - self.null_logit
        if scoring in ("joint", "joint-vote"):
            return self.relevance + self.span_logprob
        raise ValueError(f"unknown scoring {scoring!r}: choose one of {', '.join(SCORINGS)}")


@dataclass(frozen=True)
class ReadAnswer:
    """An answer and where it was read: the passage's index among those read (None: no passage had a span) and the
    answer's characters in its text, `text == passages[passage].text[start:end]`."""

    text: str
    passage: int | None
    start: int = 0
    end: int = 0


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    """`text[start:end]` without its surrounding whitespace, as character offsets."""
    span = text[start:end]
    left = start + len(span) - len(span.lstrip())
    return left, max(left, end - len(span) + len(span.rstrip()))


def choose_answer(question_spans: Sequence[PassageSpan], passages: Sequence[PassageText], scoring: str) -> ReadAnswer:
    """The answer text of the best passage under `scoring`, and where it stands; ("", None) when no passage has a span."""
    usable = [s for s in question_spans if s.end_char > s.start_char]
    if not usable:
        return ReadAnswer("", None)
    offsets = [_stripped(passages[s.passage].text, s.start_char, s.end_char) for s in usable]
    texts = [passages[s.passage].text[a:b] for s, (a, b) in zip(usable, offsets)]
    scores = torch.tensor([s.score(scoring) for s in usable], dtype=torch.float64)
    if scoring == "joint-vote":
        weights = torch.softmax(scores, 0).tolist()
        votes: dict[str, float] = {}
        for text, weight in zip(texts, weights):
            key = " ".join(text.lower().split())
            votes[key] = votes.get(key, 0.0) + weight
        # Each passage's score becomes its answer's total, so the best-scored spelling of the winner is returned.
        scores = torch.tensor([votes[" ".join(t.lower().split())] for t in texts], dtype=torch.float64) + 1e-9 * torch.softmax(scores, 0)
    # Ties go to the earlier (better retrieved) passage: argmax keeps the first maximum.
    best = int(torch.argmax(scores))
    return ReadAnswer(texts[best], usable[best].passage, *offsets[best])


class SpanReader(torch.nn.Module):
    """Extractive reader: encoder + start/end head + [CLS] relevance head; see the module docstring."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: SpanReaderConfig,
                 name: str, device: str | None = None) -> None:
        super().__init__()
        config.check()
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the span reader needs a fast tokenizer (offset mappings)")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        hidden = int(encoder.config.hidden_size)
        # Names as in transformers' DPRReader: qa_outputs (start, end) and qa_classifier (relevance).
        self.qa_outputs = torch.nn.Linear(hidden, 2)
        self.qa_classifier = torch.nn.Linear(hidden, 1)
        self.to(pick_device(device))
        self.eval()

    @classmethod
    def from_encoder(cls, name_or_path: str = DEFAULT_ENCODER, device: str | None = None, seed: int = 0, **settings: Any) -> SpanReader:
        """A new reader over a pretrained encoder, with a freshly initialised head (seeded)."""
        tokenizer, encoder, _ = load_encoder_model(name_or_path, "span reader encoder", add_pooling_layer=False)
        config = SpanReaderConfig(base_model=name_or_path, **settings)
        torch.manual_seed(seed)
        return cls(encoder, tokenizer, config, name=name_or_path, device=device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> SpanReader:
        """Load a folder written by `save_pretrained`; the encoder comes back in float32."""
        path = Path(path)
        if not is_span_reader(path):
            raise ValueError(f"{path} is not a span reader folder (no {MARKER_FILE} with kind {KIND!r})")
        raw = json.loads((path / MARKER_FILE).read_text())
        known = set(SpanReaderConfig.__dataclass_fields__)
        config = SpanReaderConfig(**{k: v for k, v in raw.items() if k in known})
        tokenizer, encoder, _ = load_encoder_model(path / ENCODER_DIR, "span reader encoder", add_pooling_layer=False,
                                                   dtype=torch.float32)
        reader = cls(encoder.float(), tokenizer, config, name=str(path), device="cpu")
        head = load_file(str(path / HEAD_FILE))
        reader.qa_outputs.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in head.items() if k.startswith("qa_outputs.")})
        reader.qa_classifier.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in head.items() if k.startswith("qa_classifier.")})
        return reader.to(pick_device(device))

    def save_pretrained(self, path: str | Path, encoder_dtype: torch.dtype = torch.float16) -> None:
        """Write the folder `from_pretrained` reads; the encoder is stored in `encoder_dtype` (float16: half the size)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        encoder_dir = path / ENCODER_DIR
        original = next(self.encoder.parameters()).dtype
        try:
            self.encoder.to(encoder_dtype).save_pretrained(encoder_dir)
        finally:
            self.encoder.to(original)
        self.tokenizer.save_pretrained(encoder_dir)
        # The head is tiny: keep it in float32, it decides every answer.
        head = {f"qa_outputs.{k}": v.detach().float().cpu().contiguous() for k, v in self.qa_outputs.state_dict().items()}
        head.update({f"qa_classifier.{k}": v.detach().float().cpu().contiguous() for k, v in self.qa_classifier.state_dict().items()})
        save_file(head, str(path / HEAD_FILE))
        (path / MARKER_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def default_k(self) -> int:
        return self.config.k

    # -- encoding --------------------------------------------------------------------------------

    def encode_pairs(self, questions: Sequence[str], passages: Sequence[PassageText]) -> EncodedPairs:
        """Tokenise aligned (question, passage) pairs, padded to the longest, truncated to `max_length`."""
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions but {len(passages)} passages")
        seconds, text_starts = [], []
        for p in passages:
            if not isinstance(getattr(p, "text", None), str) or not isinstance(getattr(p, "title", None), str):
                raise TypeError(f"a passage needs str .title and .text, got {type(p).__name__}")
            # DPR's layout: question [SEP] title [SEP] text; the tokenizer turns the literal [SEP] into the token.
            prefix = f"{p.title} {self.tokenizer.sep_token} " if p.title else ""
            seconds.append(prefix + p.text)
            text_starts.append(len(prefix))
        batch = self.tokenizer(
            [q.strip() for q in questions], seconds, truncation="longest_first", max_length=self.config.max_length,
            padding=True, return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt",
        )
        second = torch.tensor([[s == 1 for s in batch.sequence_ids(row)] for row in range(len(seconds))], dtype=torch.bool)
        # Character offsets into p.text: the title prefix and the question fall below 0 and are masked out.
        offsets = batch["offset_mapping"] - torch.tensor(text_starts).view(-1, 1, 1)
        context = second & (offsets[..., 0] >= 0) & (offsets[..., 1] > offsets[..., 0])
        return EncodedPairs(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], context, offsets)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start logits (B, L), end logits (B, L) and relevance logits (B,), all float32."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        start, end = self.qa_outputs(hidden).float().unbind(-1)
        relevance = self.qa_classifier(hidden[:, 0]).float().squeeze(-1)
        return start, end, relevance

    # -- answering -------------------------------------------------------------------------------

    def best_spans(self, encoded: EncodedPairs, start: torch.Tensor, end: torch.Tensor, relevance: torch.Tensor,
                   max_answer_tokens: int | None = None) -> list[PassageSpan]:
        """The best span of each row (passage index = row), with its scores; spans lie inside the passage text."""
        limit = max_answer_tokens or self.config.max_answer_tokens
        start, end = start.detach().float().cpu(), end.detach().float().cpu()
        spans = []
        for row in range(start.shape[0]):
            context = encoded.context[row]
            allowed = context.clone()
            allowed[0] = True  # [CLS]: the no-answer choice, part of the normalisation of log p(span)
            s = start[row].masked_fill(~allowed, float("-inf"))
            e = end[row].masked_fill(~allowed, float("-inf"))
            null = float(s[0] + e[0])
            norm = float(torch.logsumexp(s, 0) + torch.logsumexp(e, 0))
            positions = context.nonzero().squeeze(-1)
            if positions.numel() == 0:
                spans.append(PassageSpan(row, 0, 0, float("-inf"), null, float("-inf"), float(relevance[row])))
                continue
            cs, ce = s[positions], e[positions]
            # (start i, end j) over context tokens with 0 <= j - i < limit, in one matrix.
            pairs = cs.unsqueeze(1) + ce.unsqueeze(0)
            gap = positions.unsqueeze(0) - positions.unsqueeze(1)
            pairs = pairs.masked_fill((gap < 0) | (gap >= limit), float("-inf"))
            flat = int(pairs.argmax())
            i, j = positions[flat // pairs.shape[1]], positions[flat % pairs.shape[1]]
            logit = float(pairs.view(-1)[flat])
            spans.append(PassageSpan(row, int(encoded.offsets[row, i, 0]), int(encoded.offsets[row, j, 1]), logit, null,
                                     logit - norm, float(relevance[row])))
        return spans

    @torch.inference_mode()
    def read(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]],
             max_answer_tokens: int | None = None) -> list[list[PassageSpan]]:
        """For each question, the best span of each of its passages with its scores (in passage order)."""
        if isinstance(questions, str):
            raise TypeError("questions must be a sequence of strings, not one string")
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions but {len(passages)} passage lists")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"every question must be a non-empty string, got {q!r}")
        pairs = [(qi, q, p) for qi, (q, ps) in enumerate(zip(questions, passages)) for p in ps]
        out: list[list[PassageSpan]] = [[] for _ in questions]
        was_training = self.training
        self.eval()
        try:
            for lo in range(0, len(pairs), INFERENCE_BATCH):
                chunk = pairs[lo : lo + INFERENCE_BATCH]
                encoded = self.encode_pairs([q for _, q, _ in chunk], [p for _, _, p in chunk])
                start, end, relevance = self(**encoded.model_inputs(self.device))
                for (qi, _, _), span in zip(chunk, self.best_spans(encoded, start, end, relevance, max_answer_tokens)):
                    span.passage = len(out[qi])
                    out[qi].append(span)
        finally:
            self.train(was_training)
        return out

    def answer(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[ReadAnswer]:
        """One answer per question, the best span over its passages, with where it was read (passage, characters)."""
        spans = self.read(questions, passages)
        return [choose_answer(s, ps, self.config.scoring) for s, ps in zip(spans, passages)]

    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[str]:
        """One answer per question: the best span over its passages ("" when it has none)."""
        return [a.text for a in self.answer(questions, passages)]
