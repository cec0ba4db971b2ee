"""Portability probes for CounterFact edits: two-hop questions whose answer follows from the edit.

An edit "Wanne-Eickel Central Station is located in Switzerland" ports when the system also answers
"What is the capital of the place where Wanne-Eickel Central Station is located?" with Bern. The second hop
(Switzerland's capital, or its continent) is a true fact that CounterFact itself states: its records'
`ground_truth` for prompts like "The capital of Switzerland is". A probe is made only where
- the edit's prompt names a relation with a place as its object (located in, citizen of, died in, ...),
- the new target is the subject of a capital or continent fact, stated with one answer only,
- and that answer tells the edited world from the old one and is a second hop: it is neither the old nor
  the new target, and the old target's own capital (continent) is known and different, or for capitals
  unknown (a capital names one place; a continent holds many, so an old target of unknown continent may
  share the new one's).

    python -m trainer.edit_portability --edits counterfact-test.jsonl.gz \
        --facts counterfact-train.jsonl.gz counterfact-val.jsonl.gz counterfact-test.jsonl.gz --out FILE
writes the edits that get a probe as canonical cases (see trainer.edit_cases), with `portability` filled.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from trainer.edit_cases import EditCase, Probe, read_cases, subject_as
from trainer.qa_data import jsonl_lines

# The edit prompt's relation (from its wording, with the subject cut out as "{}") -> the new target as a noun
# phrase about the subject. Order matters: the first pattern that matches wins.
FIRST_HOP: list[tuple[str, str]] = [
    (r"\btwin city\b", "the twin city of {}"),
    (r"\bcitizen", "the country {} is a citizen of"),
    (r"\bheadquarter|\bbased in\b", "the place where {} has its headquarters"),
    (r"\b(expired|passed away|died|life ended|lost their life|succumbed)\b", "the place where {} died"),
    (r"\b(work|worked|employed|employment)\b", "the place where {} worked"),
    (r"\bborn in\b", "the place where {} was born"),
    (r"\b(originat\w*|formulated|created|developed|founded|formed|started|native to|from$)", "the place where {} comes from"),
    (r"\b(located|location)\b|, in$|\bis in$|\bcan be found in\b|\bis within\b", "the place where {} is located"),
]
# A fact prompt about a place (subject cut out as "{}") -> the relation it states, and the question of the
# second hop over the first hop's noun phrase.
SECOND_HOP: list[tuple[str, str, str]] = [
    (r"capital", "capital", "What is the capital of {}?"),
    (r"continent", "continent", "On which continent is {}?"),
]
# CounterFact "true" facts that are historical or disputed (Wikidata lists several capitals, or states
# disagree): left out.
DISPUTED = {("England", "capital"), ("Kingdom of Italy", "capital"), ("Roman Empire", "capital"), ("Israel", "capital")}


def first_hop_phrase(prompt: str, subject: str) -> str | None:
    """The edit's new target as a noun phrase about its subject ("the place where X died"), or None when the
    prompt's relation is not one whose object is a place."""
    template = subject_as(prompt, subject, "{}")
    if template is None:
        return None
    for pattern, phrase in FIRST_HOP:
        if re.search(pattern, template):
            return phrase.format(subject)
    return None


def place_facts(records: Iterable[dict]) -> dict[str, dict[str, set[str]]]:
    """subject -> relation (capital, continent) -> the true answers CounterFact's records state for it."""
    facts: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        template = subject_as(record["prompt"], record["subject"], "{}")
        relation = next((r for pattern, r, _ in SECOND_HOP if template and re.search(pattern, template)), None)
        if relation is not None and (record["subject"], relation) not in DISPUTED:
            facts[record["subject"]][relation].add(record["ground_truth"])
    return facts


def portability_probe(case: EditCase, facts: dict[str, dict[str, set[str]]]) -> Probe | None:
    """A two-hop question about the edit, answered by a true fact about its new target (capital first, then
    continent), or None when no such question tells the edited world from the old one."""
    phrase = first_hop_phrase(case.question, case.subject or "")
    if phrase is None:
        return None
    for _, relation, question in SECOND_HOP:
        new = facts.get(case.target_new, {}).get(relation, set())
        if len(new) != 1 or new & {case.target_new, case.target_old}:
            continue  # no single answer, or not a second hop
        old = facts.get(case.target_old or "", {}).get(relation)
        # A capital names one place, so an old target without one cannot share it; a continent may be shared.
        if (old & new) if old is not None else relation != "capital":
            continue
        return Probe(question.format(phrase), next(iter(new)))
    return None


def read_records(paths: Sequence[Path]) -> list[dict]:
    """The raw CounterFact records of several files (plain or gzipped JSON lines); ValueError for a missing file."""
    return [json.loads(line) for path in paths for _, line in jsonl_lines(path, "facts file")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.edit_portability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=Path, required=True, help="CounterFact edit file to add probes to")
    parser.add_argument("--facts", type=Path, nargs="+", required=True, help="CounterFact files whose true facts answer the second hop")
    parser.add_argument("--out", type=Path, required=True, help="canonical edit file to write (.jsonl or .jsonl.gz)")
    args = parser.parse_args(argv)
    try:
        cases = read_cases(args.edits, "counterfact")
        facts = place_facts(read_records(args.facts))
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ported = [dataclasses.replace(c, portability=p) for c in tqdm(cases, desc="probes", unit="case")
              if (p := portability_probe(c, facts)) is not None]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(args.out, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n" for c in ported)
    print(json.dumps({"edits": len(cases), "with_portability": len(ported), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
