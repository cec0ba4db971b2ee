"""Diagnostic: how often does the reader still see the answer when a passage is cut to N tokens?

The decoder reader cuts every passage to its first `--max-passage-tokens` tokens (`DecoderReader._truncate`),
and the CPU joint-training runs used 64 to save time. A teacher that cannot see the answer in the gold passage
cannot prefer it, and a reader cannot read the answer off it. For a seeded sample (seed 0) of each QA file's
records with gold_ids, this counts the records whose answer (normalised, as `rag-eval qa`'s recall of answers)
occurs in a gold passage of the index at all, and within the first N reader tokens of one, for each N of
`--tokens`; and the gold passages' token lengths. Only the reader's tokenizer and the passage store run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bench.common import DEFAULT_INDEX, QA_DIR, default_out, log, machine_info, results_out, write_result
from indexer.index import Index
from rag.models import GENERATIVE_READER, resolve_reader_path
from trainer.qa_data import QARecord, read_qa, sample
from trainer.qa_metrics import contains_answer

FILES = ("squad-open-train", "nq-open-train", "squad-open-dev", "nq-open-test")


def answer_in_gold(index: Index, tokenizer: PreTrainedTokenizerBase, records: Sequence[QARecord],
                   cuts: Sequence[int]) -> dict[str, Any]:
    """Of the records that have a gold passage in `index`: the share whose answer occurs in one, whole ("whole") and
    within its first N tokens (str(N) for each N of `cuts`); and the gold passages' token-length percentiles."""
    gen, with_gold, visible, lengths = index.generation, 0, dict.fromkeys(["whole", *map(str, cuts)], 0), []
    for record in records:
        rows = [row for row, _, _ in index.store.live_passages(record.gold_ids).values()]
        texts = [p.text for p in index.store.iter_passages(gen, rows)]
        if not texts:
            continue
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        with_gold += 1
        lengths += map(len, ids)
        visible["whole"] += any(contains_answer(text, record.answers) for text in texts)
        for n in cuts:
            visible[str(n)] += any(contains_answer(tokenizer.decode(t[:n]), record.answers) for t in ids)
    return {"records": len(records), "with_gold_passage": with_gold,
            "answer_in_gold": {k: round(v / max(with_gold, 1), 3) for k, v in visible.items()},
            "gold_passage_tokens": {q: int(np.percentile(lengths, q)) for q in (50, 90, 99)} if lengths else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--files", nargs="+", default=list(FILES), help="QA files of ../shared/data/qa (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=1000, help="records with gold_ids per file (seeded sample, seed 0)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 160, 192], help="passage cuts to try")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/passage_truncation.json; with another --limit, passage_truncation_limitN.json)")
    args = parser.parse_args()
    out = results_out(parser, args, default_out(__file__))
    info = machine_info()
    tokenizer = AutoTokenizer.from_pretrained(resolve_reader_path(GENERATIVE_READER))
    index = Index.open(args.index, readonly=True)
    result: dict[str, Any] = {"settings": {"limit": args.limit, "tokens": args.tokens, "reader": GENERATIVE_READER}}
    for name in args.files:
        records = sample([r for r in read_qa(QA_DIR / f"{name}.jsonl.gz") if r.gold_ids], args.limit, 0)
        result[name] = answer_in_gold(index, tokenizer, records, args.tokens)
        log(name, json.dumps(result[name]))
    index.close()
    write_result(out, result, info)


if __name__ == "__main__":
    main()
