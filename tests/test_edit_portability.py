"""Two-hop portability probes for CounterFact edits, and the canonical file they are written to."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from trainer.edit_cases import guess_format, read_cases
from trainer.edit_portability import first_hop_phrase, main, place_facts, portability_probe

FACTS = [
    {"prompt": "The capital of Sweden is", "subject": "Sweden", "ground_truth": "Stockholm"},
    {"prompt": "Sweden is a part of the continent of", "subject": "Sweden", "ground_truth": "Europe"},
    {"prompt": "Spain's capital city is", "subject": "Spain", "ground_truth": "Madrid"},
    {"prompt": "Spain belongs to the continent of", "subject": "Spain", "ground_truth": "Europe"},
    {"prompt": "Japan is located in the continent", "subject": "Japan", "ground_truth": "Asia"},
    {"prompt": "The capital of Atlantis is", "subject": "Atlantis", "ground_truth": "Poseidonia"},
    {"prompt": "The capital of Atlantis is", "subject": "Atlantis", "ground_truth": "Meropis"},  # two answers: unusable
    {"prompt": "The capital of England is", "subject": "England", "ground_truth": "Winchester"},  # disputed: left out
    {"prompt": "Lima, which has the capital", "subject": "Lima", "ground_truth": "Lima"},  # a city its own capital
]


def edit(case_id: int, prompt: str, subject: str, new: str, old: str) -> dict:
    return {"case_id": case_id, "prompt": prompt, "subject": subject, "target_new": new, "ground_truth": old,
            "rephrase_prompt": f"{subject} is in", "locality_prompt": "Z is in", "locality_ground_truth": old}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_first_hop_names_the_new_target_by_the_edits_relation() -> None:
    assert first_hop_phrase("Autonomous University of Madrid, located in", "Autonomous University of Madrid") == \
        "the place where Autonomous University of Madrid is located"
    assert first_hop_phrase("Kim Myhr, who has a citizenship from", "Kim Myhr") == "the country Kim Myhr is a citizen of"
    assert first_hop_phrase("Maso passed away at", "Maso") == "the place where Maso died"
    assert first_hop_phrase("The mother tongue of X is", "X") is None  # a language, not a place
    assert first_hop_phrase("X is a part of the network of", "X") is None  # "network" is not "work"
    assert first_hop_phrase("Y is located in", "X") is None  # the subject is not in the prompt


def test_probes_follow_the_new_target_and_tell_it_from_the_old(tmp_path: Path) -> None:
    facts = place_facts(FACTS)
    assert facts["Sweden"]["capital"] == {"Stockholm"} and "England" not in facts
    cases = read_cases(write_jsonl(tmp_path / "counterfact-t.jsonl.gz", [
        edit(1, "Kim Myhr, who has a citizenship from", "Kim Myhr", "Sweden", "Norway"),  # capital, old unknown: kept
        edit(2, "Arjoun is located in", "Arjoun", "Japan", "Syria"),  # no capital; continent of the old unknown: none
        edit(3, "Arjoun is located in", "Arjoun", "Japan", "Spain"),  # continents differ: continent probe
        edit(4, "Arjoun is located in", "Arjoun", "Sweden", "Spain"),  # capital first
        edit(5, "Arjoun is located in", "Arjoun", "Atlantis", "Spain"),  # two capitals, no continent
        edit(6, "Arjoun is located in", "Arjoun", "England", "Spain"),  # disputed fact only
        edit(7, "The mother tongue of Arjoun is", "Arjoun", "Sweden", "Spain"),  # not a place relation
        edit(8, "Wallmerod, in", "Wallmerod", "Spain", "Sweden"),  # continents equal, but the capital tells them apart
        edit(9, "Lausanne is a twin city of", "Lausanne", "Lima", "Osaka"),  # the "second hop" is the first: none
    ]))
    probes = {c.id: portability_probe(c, facts) for c in cases}
    assert probes["1"].question == "What is the capital of the country Kim Myhr is a citizen of?" and probes["1"].answer == "Stockholm"
    assert probes["3"].question == "On which continent is the place where Arjoun is located?" and probes["3"].answer == "Asia"
    assert probes["4"].answer == "Stockholm" and probes["8"].answer == "Madrid"
    assert [k for k, p in probes.items() if p is None] == ["2", "5", "6", "7", "9"]


def test_the_command_writes_canonical_cases_with_probes(tmp_path: Path, capsys) -> None:
    edits = write_jsonl(tmp_path / "counterfact-e.jsonl.gz", [edit(1, "Kim Myhr, a citizen of", "Kim Myhr", "Sweden", "Norway"),
                                                              edit(2, "The mother tongue of Kim is", "Kim", "Sweden", "Norway")])
    facts = write_jsonl(tmp_path / "facts.jsonl.gz", FACTS)
    out = tmp_path / "counterfact-ported.jsonl.gz"  # named like CounterFact, yet read as canonical by its fields
    assert main(["--edits", str(edits), "--facts", str(facts), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["with_portability"] == 1
    assert guess_format(out) == "canonical"
    zsre = tmp_path / "my-edits.jsonl"
    zsre.write_text(json.dumps({"src": "What does U make?", "alt": "drones"}) + "\n")
    assert guess_format(zsre) == "zsre" and guess_format(tmp_path / "counterfact-missing.jsonl") == "counterfact"
    [case] = read_cases(out)
    assert (case.id, case.target_new, case.target_old, case.subject) == ("1", "Sweden", "Norway", "Kim Myhr")
    assert case.portability.answer == "Stockholm" and case.neighbors[0].question == "Z is in"
    assert main(["--edits", str(edits), "--facts", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "facts file not found" in capsys.readouterr().err
