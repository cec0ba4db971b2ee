"""Locality within a subject: does an edit answer other questions about its subject? With and without the answer-type gate.

An edit that changed where the Eiffel Tower is must not answer "How tall is the Eiffel Tower?". CounterFact's and
zsRE's neighbour questions are about other subjects, so `rag-eval edits` does not measure this. Here every case's
edit goes into one scratch memory (as bench/edit_scope.py fills it) and these probes are routed by the shipped
router (`match_edits`: the scope classifier, the subject check, the two-hop detector):
- paraphrase: a paraphrase of the case's question, which must reach the case's edit (generality);
- other_relation: another case's question put to this case's subject ("What is the product made by {}?" after an
  edit of who founded it), which should not (a few may ask the same relation in other words);
- wh: questions of fixed wh-forms about the subject (WH_TEMPLATES), most of which ask another relation.
Each probe kind is reported as the share routed to the case's own edit, without the answer-type classifier
(rag/answer_type.py) and with it. The answer-type classifier's threshold was set on counterfact-train and zsre-1k
fold 0/2; use counterfact-val or zsre-1k `--fold 1/2` here.

Also reported (`own_edit_scores`): the share of each kind whose (own edit, probe) pair the scope classifier scores at
or above each threshold of a grid, and the highest of them keeping `--keep` of the paraphrases: how a subject
threshold trades generality for locality within the subject. `--classifier` measures another classifier folder (a
training run's), e.g. one trained on zsre-1k fold 0/4 over fold 2/4 to choose the shipped one's subject threshold
on cases neither it nor the shipped one measures (fold 1/2).

Run: `python bench/edit_same_subject.py --edits FILE [--fold I/N] [--limit N] [--classifier DIR]`
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import RESULTS_DIR, log, machine_info, results_out, write_result
from bench.edit_scope import VAL, fill_memory
from indexer.encoder import DEFAULT_ENCODER, TextEncoder
from rag.answer_type import SHIPPED as ANSWER_TYPES, AnswerTypeClassifier
from rag.editing import SCOPE_CLASSIFIER, ClassifierScope, load_scope, match_edits
from rag.scope_classifier import ScopeClassifier
from rag.two_hop import load_two_hop
from trainer.answer_type_training import other_subject_questions
from trainer.edit_cases import FORMATS, EditCase, in_fold, parse_fold, read_cases

# Subject thresholds the own-edit scores are read at: fine near 0, where the classifier's scores of held-out
# paraphrases it doubts lie.
GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
KINDS = ("paraphrase", "other_relation", "wh")
WH_TEMPLATES = ("When was {} born?", "When was {} founded?", "Who founded {}?", "How many people live in {}?",
                "How old is {}?", "Where is {}?")


def probes_of(cases: Sequence[EditCase], measured: Sequence[int], seed: int) -> list[tuple[int, str, str]]:
    """(case, question, kind) for the measured cases: their paraphrases, another case's question put to their subject,
    and the wh-forms (cases with a subject only for the last two)."""
    rng = random.Random(seed)
    probes = [(i, p, "paraphrase") for i in measured for p in cases[i].paraphrases]
    by_question = {cases[i].question: i for i in measured}
    for question, other in other_subject_questions([cases[i] for i in measured], rng):
        probes.append((by_question[question], other, "other_relation"))
    probes += [(i, t.format(cases[i].subject), "wh") for i in measured if cases[i].subject for t in WH_TEMPLATES]
    return probes


def routed_to_own(probes: Sequence[tuple[int, str, str]], routed: Sequence[str | None], beyond: Sequence[str | None],
                  own: Sequence[str]) -> dict[str, Any]:
    """Per probe kind: how many, the share routed to the case's own edit (answered with it), and the share taken to
    ask beyond it (`beyond`: asked again with its answer in place of a first hop, or read with its fact in view), which
    changes the answer too."""
    out = {}
    for kind in KINDS:
        mine = [(case, to, past) for (case, _, k), to, past in zip(probes, routed, beyond) if k == kind]
        out[kind] = {"n": len(mine),
                     "routed_to_own_edit": round(float(np.mean([to == own[case] for case, to, _ in mine])), 4) if mine else None,
                     "beyond_own_edit": round(float(np.mean([past == own[case] for case, _, past in mine])), 4) if mine else None}
    return out


def own_edit_scores(probes: Sequence[tuple[int, str, str]], cases: Sequence[EditCase], classifier: ScopeClassifier,
                    keep: float) -> dict[str, Any]:
    """The classifier's score of each probe with its own case's edit, read at each threshold of GRID: the share of
    each kind at or above it, and the highest threshold keeping at least `keep` of the paraphrases (None if none does)."""
    scores = classifier.scores([cases[i].fact for i, _, _ in probes], [q for _, q, _ in probes])
    kinds = np.array([k for _, _, k in probes])
    at = {f"{t:g}": {k: round(float((scores[kinds == k] >= t).mean()), 4) for k in KINDS if (kinds == k).any()} for t in GRID}
    kept = [t for t in GRID if at[f"{t:g}"].get("paraphrase", 0.0) >= keep]
    return {"keep": keep, "highest_threshold_keeping_paraphrases": max(kept) if kept else None, "at": at}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=Path, default=VAL, help="edit cases file (counterfact*, zsre* or canonical jsonl[.gz])")
    parser.add_argument("--format", choices=FORMATS, default=None, help="file format (default: guessed from its first record)")
    parser.add_argument("--fold", default=None, metavar="I/N", help="probe only the cases in fold I of N (every edit is still in the memory)")
    parser.add_argument("--limit", type=int, default=0, help="probe at most this many cases (seeded sample; 0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", type=Path, default=Path(SCOPE_CLASSIFIER), help="scope classifier folder (default: the shipped one)")
    parser.add_argument("--keep", type=float, default=0.98, help="share of paraphrases a subject threshold must keep (own_edit_scores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/edit_same_subject_<edits file>.json)")
    args = parser.parse_args(argv)
    if not 0.0 < args.keep <= 1.0:
        parser.error(f"--keep must be above 0 and at most 1, got {args.keep}")
    torch.set_num_threads(args.threads)
    out = results_out(parser, args, RESULTS_DIR / f"edit_same_subject_{args.edits.name.split('.')[0]}.json")
    cases = read_cases(args.edits, args.format, on_error="skip")
    measured = [i for i, c in enumerate(cases) if args.fold is None or in_fold(c, parse_fold(args.fold))]
    if args.limit:
        measured = sorted(random.Random(args.seed).sample(measured, min(args.limit, len(measured))))
    encoder = TextEncoder(DEFAULT_ENCODER)
    probes = probes_of(cases, measured, args.seed)
    log(f"{len(cases)} edits in memory, {len(measured)} cases probed, {len(probes)} probes")
    scope = load_scope("classifier", args.classifier, device="cpu")
    assert isinstance(scope, ClassifierScope)  # load_scope("classifier") returns one or raises
    two_hop = load_two_hop(DEFAULT_ENCODER)
    answer_types = AnswerTypeClassifier.load(ANSWER_TYPES)
    questions = [q for _, q, _ in probes]
    vectors = encoder(questions, progress=True)
    result: dict[str, Any] = {"edits": str(args.edits), "fold": args.fold, "cases_probed": len(measured), "edits_in_memory": len(cases),
                              "wh_templates": list(WH_TEMPLATES), "answer_type_threshold": answer_types.threshold,
                              "classifier": str(args.classifier), "subject_threshold": scope.subject_threshold,
                              "question_subject_threshold": scope.question_subject_threshold}
    result["own_edit_scores"] = own_edit_scores(probes, cases, scope.classifier, args.keep)
    log("own-edit scores", result["own_edit_scores"]["highest_threshold_keeping_paraphrases"], result["own_edit_scores"]["at"])
    with tempfile.TemporaryDirectory() as scratch:
        memory, own = fill_memory(Path(scratch), cases, encoder)
        for name, kinds in (("without_answer_types", None), ("with_answer_types", functools.partial(answer_types.kinds, encode=encoder))):
            started = time.perf_counter()
            routed: list[str | None] = []
            beyond: list[str | None] = []
            for lo in range(0, len(questions), 256):
                matches = match_edits(memory, scope, questions[lo : lo + 256], vectors[lo : lo + 256], two_hop=two_hop, answer_kinds=kinds)
                # A match that asks beyond its edit is not answered with it (it is rewritten or read with the edit in view).
                routed += [m.edit.id if m is not None and not m.beyond else None for m in matches]
                beyond += [m.edit.id if m is not None and m.beyond else None for m in matches]
            result[name] = routed_to_own(probes, routed, beyond, own) | {"ms_per_question": round(1000 * (time.perf_counter() - started) / len(questions), 2)}
            log(name, result[name])
        memory.close()
    write_result(out, result, machine_info())


if __name__ == "__main__":
    main()
