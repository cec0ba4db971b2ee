"""Split documents into passages: DPR-style word windows or RETRO-style token chunks."""
from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.records import Document, Passage, passage_id

if TYPE_CHECKING:  # transformers is slow to import and only token chunking uses it
    from transformers import PreTrainedTokenizerBase


def chunk_words(doc: Document, words: int = 100, overlap: int = 0) -> list[Passage]:
    """Split `doc` into windows of `words` whitespace-separated words, each starting `words - overlap` after the last.

    Tail rule: when the last window would add fewer than `words // 4` words not already in the
    previous window, it is merged into that one, so a passage can hold up to `words + words // 4 - 1`
    words. A document of at most `words` words gives exactly one passage. Passage text is the
    window's words joined by single spaces.
    """
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words} (use chunk_document(words=0) for no chunking)")
    if not 0 <= overlap < words:
        raise ValueError(f"overlap must be >= 0 and < words ({words}), got {overlap}")
    tokens = doc.text.split()
    # A window is needed at `start` only if the previous one, ending at start - stride + words, fell short of the end.
    stride = words - overlap
    spans = [(start, min(start + words, len(tokens))) for start in range(0, max(len(tokens) - overlap, 1), stride)]
    if len(spans) > 1 and spans[-1][1] - spans[-2][1] < words // 4:
        spans[-2:] = [(spans[-2][0], spans[-1][1])]
    return [_passage(doc, n, " ".join(tokens[start:end])) for n, (start, end) in enumerate(spans)]


def chunk_tokens(doc: Document, tokenizer: PreTrainedTokenizerBase, tokens: int = 64, overlap: int = 0) -> list[Passage]:
    """Split `doc` into chunks of `tokens` tokens of a fast tokenizer (no special tokens), each starting
    `tokens - overlap` tokens after the last; the last one ends with the document.

    Each passage's text is the exact (stripped) substring of `doc.text` that its tokens cover, found
    through the tokenizer's offset mapping. A document with no tokens gives one passage.
    """
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    if not 0 <= overlap < tokens:
        raise ValueError(f"overlap must be >= 0 and < tokens ({tokens}), got {overlap}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"chunk_tokens needs a fast (Rust) tokenizer for offset mappings, got {type(tokenizer).__name__}")
    # verbose=False: documents longer than the model's max length are expected here, so no warning.
    offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if not offsets:
        return [_passage(doc, 0, doc.text.strip())]
    chunks = [offsets[i : i + tokens] for i in range(0, max(len(offsets) - overlap, 1), tokens - overlap)]
    return [_passage(doc, n, doc.text[chunk[0][0] : chunk[-1][1]].strip()) for n, chunk in enumerate(chunks)]


def chunk_document(
    doc: Document,
    *,
    words: int = 100,
    overlap: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tokens: int = 0,
) -> list[Passage]:
    """Chunk `doc` by tokens when `tokens > 0` (needs `tokenizer`), else by words when `words > 0`,
    else keep the whole document as one passage `{doc.id}#0`."""
    if words < 0 or tokens < 0:
        raise ValueError(f"words and tokens must be >= 0, got words={words}, tokens={tokens}")
    if tokens > 0:
        if tokenizer is None:
            raise ValueError("token chunking (tokens > 0) needs a tokenizer")
        return chunk_tokens(doc, tokenizer, tokens)
    if words > 0:
        return chunk_words(doc, words, overlap)
    return [_passage(doc, 0, doc.text.strip())]


def _passage(doc: Document, n: int, text: str) -> Passage:
    return Passage(id=passage_id(doc.id, n), doc_id=doc.id, title=doc.title, text=text)
