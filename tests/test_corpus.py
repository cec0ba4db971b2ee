import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.corpus import CorpusError, FieldMap, read_documents
from indexer.records import Document
from trainer.shared_data import SHARED_DATA

RECORDS = [
    {"id": "1", "title": "Aaron", "text": 'Aaron ( or ; "Ahärôn") is a prophet.\tHe had a rod.'},
    {"id": "2", "title": "Zebra", "text": "Zebras are African equines."},
    {"id": "3", "title": "", "text": "No title here."},
]
EXPECTED = [Document(id=r["id"], title=r["title"], text=r["text"]) for r in RECORDS]
WIKI_NQ = SHARED_DATA / "corpus" / "wiki-nq.jsonl.gz"


def write_jsonl(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_tsv(path: Path) -> Path:
    # DPR psgs_w100 layout: quoted text with doubled quotes, column order id, text, title.
    lines = ["id\ttext\ttitle"]
    for r in RECORDS:
        text = '"' + r["text"].replace('"', '""') + '"'
        lines.append(f"{r['id']}\t{text}\t{r['title']}")
    return write_jsonl(path, lines)


def write_parquet(path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(RECORDS), path, row_group_size=2)
    return path


def write_dataset(path: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "name, write",
    [
        ("c.jsonl", lambda p: write_jsonl(p, [json.dumps(r) for r in RECORDS])),
        ("c.jsonl.gz", lambda p: write_jsonl(p, [json.dumps(r) for r in RECORDS])),
        ("c.tsv", write_tsv),
        ("c.tsv.gz", write_tsv),
        ("c.parquet", write_parquet),
        ("c_dataset", write_dataset),
    ],
)
def test_every_format_reads_the_same_documents(tmp_path: Path, name: str, write) -> None:
    path = write(tmp_path / name)
    assert list(read_documents(path)) == EXPECTED


def test_dataset_dict_with_one_split(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"corpus": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "d"))
    assert list(read_documents(tmp_path / "d")) == EXPECTED


def test_field_map_and_meta(tmp_path: Path) -> None:
    record = {"docid": 7, "contents": "  Some text.  ", "url": "http://x", "tags": ["a"]}
    path = write_jsonl(tmp_path / "c.jsonl", ["", json.dumps(record), "   "])
    docs = list(read_documents(path, FieldMap.parse("id=docid, text=contents")))
    assert docs == [Document(id="7", title="", text="Some text.", meta={"url": "http://x", "tags": ["a"]})]


def test_field_map_parse() -> None:
    assert FieldMap.parse("id=docid,text=contents") == FieldMap(id="docid", title="title", text="contents")
    assert FieldMap.parse("") == FieldMap()
    with pytest.raises(CorpusError, match="unknown key 'body'.*id, title, text"):
        FieldMap.parse("body=contents")
    with pytest.raises(CorpusError, match="KEY=FIELD"):
        FieldMap.parse("id")
    with pytest.raises(CorpusError, match="id is mapped twice in 'id=title,id=text' \\('title' and 'text'\\)"):
        FieldMap.parse("id=title,id=text")


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"id": "x", "text": "a" "b"}', r"invalid JSON \(Expecting ',' delimiter\)"),
        ('["x", "a"]', "record is not a JSON object"),
        ('{"text": "no id"}', "missing id"),
        ('{"id": "x", "text": "   "}', "missing or empty text"),
        ('{"id": "x", "text": "\\u0000\\u0001"}', "missing or empty text"),
        ('{"id": "x", "title": "t"}', "missing or empty text"),
        ('{"id": "a#1", "text": "t"}', "document id 'a#1' contains '#'.*passage ids"),
        # Ids the server could never be asked for by URL: GET /documents/{id} would not reach them.
        ('{"id": "..", "text": "t"}', r"document id '\.\.' must not .* be '\.' or '\.\.'"),
        ('{"id": "a\\nb", "text": "t"}', r"document id 'a\\nb' must not contain control characters"),
        # Not stripped into another document's id: " 1 " would overwrite document 1.
        ('{"id": " 1 ", "text": "t"}', r"document id ' 1 ' must not .* start or end with white space"),
        ('{"id": "  ", "text": "t"}', "missing id"),
        ('{"id": "' + "i" * 513 + '", "text": "t"}', "a document id is 1 to 512 characters, not 513"),
        ('{"id": "1", "text": "again"}', r"duplicate id '1' \(first seen at line 1\)"),
        ('{"id": "x", "text": "t", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}", r"invalid JSON \(arrays or objects nested too deeply\)"),
        ('{"id": "x", "text": "t", "n": ' + "9" * 5000 + "}", r"invalid JSON \(Exceeds the limit \(4300 digits\)"),
        ('{"id": ["x"], "text": "t"}', "id field 'id' is a list, not a string or an integer"),
        ('{"id": true, "text": "t"}', "id field 'id' is a bool"),
        ('{"id": "x", "title": ["a", "b"], "text": "t"}', "title field 'title' is a list, not a string"),
        ('{"id": "x", "text": "lone \\ud800 half"}', r"not valid Unicode: an unpaired surrogate '\\ud800'"),
        ('{"id": "x", "text": "t", "note": {"deep": "\\udfff"}}', "not valid Unicode"),
        ('{"id": "x", "title": "' + "T" * 1001 + '", "text": "t"}', "a title of 1,001 characters; at most 1,000"),
        ('{"id": "x", "text": "t", "m": ' + "[" * 33 + "]" * 33 + "}", "metadata nested more than 32 levels deep"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(RECORDS[0]), "", bad_line, json.dumps(RECORDS[1])])
    docs = read_documents(path)
    assert next(docs) == EXPECTED[0]
    with pytest.raises(CorpusError, match=f"c.jsonl:3: {problem}.*--on-error skip"):
        next(docs)


def test_skip_bad_records_and_report_them(tmp_path: Path) -> None:
    lines = [json.dumps(RECORDS[0]), "{oops", json.dumps(RECORDS[0]), json.dumps(RECORDS[1])]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    skipped: list[str] = []
    assert list(read_documents(path, on_error="skip", skipped=skipped)) == EXPECTED[:2]
    assert len(skipped) == 2
    assert skipped[0].endswith("c.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes)")
    assert skipped[1].endswith("c.jsonl:3: duplicate id '1' (first seen at line 1)")


def test_invalid_utf8_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n" + b'{"id": "2", "text": "\xff"}\n')
    with pytest.raises(CorpusError, match="c.jsonl:2: not valid UTF-8"):
        list(read_documents(path))


def test_tsv_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.tsv", ["id\ttext\ttitle", "1\tone\tT", "2\ttwo"])
    with pytest.raises(CorpusError, match="c.tsv:3: expected 3 tab-separated columns"):
        list(read_documents(path))
    path = write_jsonl(tmp_path / "d.tsv", ["docid\ttext", "1\tone"])
    with pytest.raises(CorpusError, match="d.tsv:1: the header has no 'id' column.*--fields id=NAME"):
        list(read_documents(path))
    assert [d.id for d in read_documents(path, FieldMap(id="docid"))] == ["1"]


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "1", "text": "a"}, {"id": "2", "text": None}]), path)
    with pytest.raises(CorpusError, match="c.parquet: row 2: missing or empty text"):
        list(read_documents(path))


def test_missing_file_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="nope.jsonl: no such file"):
        read_documents(tmp_path / "nope.jsonl")


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("id,text\n")
    with pytest.raises(CorpusError, match=r"unsupported corpus format.*\.jsonl.*\.tsv.*\.parquet.*save_to_disk"):
        read_documents(tmp_path / "c.csv")


def test_corrupt_gzip(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip data\n")
    with pytest.raises(CorpusError, match="bad.jsonl.gz: cannot read the file.*BadGzipFile"):
        list(read_documents(tmp_path / "bad.jsonl.gz"))
    data = gzip.compress("".join(json.dumps({"id": str(i), "text": "x " * 50}) + "\n" for i in range(2000)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"cut.jsonl.gz:\d+: cannot read the file"):
        list(read_documents(tmp_path / "cut.jsonl.gz"))


def test_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="cannot read the file"):
        list(read_documents(tmp_path))


@pytest.mark.skipif(not WIKI_NQ.exists(), reason="shared wiki-nq corpus not present")
def test_reads_shared_wiki_nq_corpus() -> None:
    docs = [doc for _, doc in zip(range(50), read_documents(WIKI_NQ))]
    assert len(docs) == 50
    assert len({d.id for d in docs}) == 50
    assert all(d.id and d.text and "#" not in d.id for d in docs)
