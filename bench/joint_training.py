"""Benchmark: recall@5 and EM before and after joint retriever-reader training, one run per loss.

Sets as in the issue: 500-question samples (seed 0) of squad-open-dev and of the nq-open-test records
with gold_ids, over the whole shared corpus; recall of dense retrieval (the trained retriever alone) and of
hybrid (fused with BM25, as the server ranks). Those sets are evaluation only: with --held-out-share (default
0.1) training leaves out the training files' questions about a seeded share of their articles, and the same
figures are measured on 500 of them per file (`*-held-out`), to choose settings on. Each training run is a subprocess
`rag-train joint --query-side-only ...` on squad-open-train + nq-open-train whose exact command is kept in
the result; its exported query encoder and reader adapter are then evaluated here, in-process, with
`rag-eval qa`'s metrics (trainer.evaluate.evaluate_qa over the shared index's stored passage vectors; after a
--refresh run, which trains the passage side too, over the corpus re-embedded with the exported encoder, as
`rag-index build --encoder` would serve it).
"Before" is the untrained system: the index's MiniLM encoder and SmolLM2-135M-Instruct as it comes.

On a CPU the scale is reduced and the table says so: query-side training only (the passage vectors stay
the index's), `--steps` x `--batch-size` training questions, recall on all 500 questions of each set but EM
on a seeded sub-sample of `--em-limit` of them (generation is the slow part). The result file is
rewritten after every piece, and a rerun skips the pieces it already has.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import DEFAULT_INDEX, QA_DIR, default_out, log, machine_info, results_out, run_rag_eval, write_result
from indexer.index import Index
from rag.models import GENERATIVE_READER
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from trainer.evaluate import evaluate_qa
from trainer.joint_training import JointTrainingConfig, split_held_out
from trainer.training_index import CANDIDATE_SOURCES, TrainingIndex, generation_file
from trainer.qa_data import QARecord, read_qa, sample

TRAIN = [QA_DIR / "squad-open-train.jsonl.gz", QA_DIR / "nq-open-train.jsonl.gz"]
HELD_OUT_SHARE = 0.1  # of the training files' articles, held out to choose settings on
SETS = {"squad-open-dev": (QA_DIR / "squad-open-dev.jsonl.gz", False), "nq-open-test-gold": (QA_DIR / "nq-open-test.jsonl.gz", True)}


class NoReader:
    """A reader that answers nothing: recall without paying for generation (its EM is meaningless)."""

    default_k = 0

    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[Any]]) -> list[str]:
        return ["" for _ in questions]


def question_sets(limit: int) -> dict[str, list[QARecord]]:
    """The issue's samples: `limit` seeded (seed 0) questions of each set, gold_ids records only for NQ (as --with-gold-ids)."""
    sets = {}
    for name, (path, gold_only) in SETS.items():
        records = [r for r in read_qa(path) if r.gold_ids or not gold_only]
        sets[name] = sample(records, limit, 0)
    return sets


def held_out_sets(index: Index, limit: int, share: float = HELD_OUT_SHARE, files: Sequence[Path] = TRAIN) -> dict[str, list[QARecord]]:
    """The sets settings are chosen on, since the issue's sets are evaluation only (shared/data/SOURCES.md): `limit`
    seeded records per training file of those about the share of their articles that rag-train joint
    --held-out-share leaves out of training."""
    per_file = {path.name.removesuffix(".jsonl.gz"): [r for r in read_qa(path) if r.gold_ids] for path in files}
    # One split over both files, as rag-train joint makes it: an article both files ask about is held out of both.
    _, held = split_held_out(index, [r for part in per_file.values() for r in part], share)
    held_records = {id(r) for r in held}  # by identity: record ids may repeat across files
    return {f"{name}-held-out": sample([r for r in part if id(r) in held_records], limit, 0) for name, part in per_file.items()}


def recall(index: Index | TrainingIndex, retriever: DualEncoder, records: Sequence[QARecord],
           mode: Literal["dense", "hybrid"] = "dense") -> dict[str, Any]:
    """n and recall@1/5/20 of `retriever`'s query side over the index's vectors (no reader runs): dense, the retriever
    alone (keys `recall@K`), or hybrid, fused with BM25 as the server ranks (keys `hybrid_recall@K`)."""
    retriever.eval()  # and it stays so: the bench only measures with it
    summary, _ = evaluate_qa(Pipeline(index, NoReader(), retriever=retriever), records,  # type: ignore[arg-type]
                             k=5, mode=mode, batch_size=32, progress=False)
    prefix = "" if mode == "dense" else f"{mode}_"
    return {"n": summary["n"]} | {prefix + key: summary[key] for key in ("recall@1", "recall@5", "recall@20")}


def system_recall(index: Index | TrainingIndex, retriever: DualEncoder, records: Sequence[QARecord]) -> dict[str, Any]:
    """`recall` dense, and hybrid too when the index has its BM25 part."""
    return recall(index, retriever, records) | (recall(index, retriever, records, "hybrid") if index.sparse is not None else {})


def lacks_hybrid(figures: dict[str, dict[str, Any]], index: Index) -> bool:
    """Whether `figures` (a result file's, per set) were measured before hybrid recall was, on an index that has BM25."""
    return index.sparse is not None and any("hybrid_recall@5" not in f for f in figures.values())


def add_hybrid(figures: dict[str, dict[str, Any]], index: Index | TrainingIndex, retriever: DualEncoder, sets: dict[str, list[QARecord]]) -> None:
    """Measure the hybrid recall `figures` lack, so rerunning a bench's command completes an older result file."""
    for name, records in sets.items():
        if "hybrid_recall@5" not in figures[name]:
            figures[name] |= recall(index, retriever, records, "hybrid")
            log(name, json.dumps(figures[name]))


def trained_index(index: Index, run: Path, encoder: DualEncoder) -> TrainingIndex:
    """The corpus re-embedded with `encoder`, the run's exported one (its passage side trained too), searchable as the
    index; an earlier re-embedding of the same export is reused (it takes about 20 minutes on two cores)."""
    folder, exported = run / "evaluation-index", run / "export" / "encoder"
    earlier = generation_file(folder, 1)
    if earlier.is_file() and earlier.stat().st_mtime > max(f.stat().st_mtime for f in exported.rglob("*")):
        log("reusing the corpus re-embedded with", exported, "in", earlier)
        return TrainingIndex(index, folder, generation=1)
    search = TrainingIndex(index, folder)
    log("re-embedding the corpus with", exported)
    log("re-embedded", json.dumps(search.refresh(encoder, progress=True)))
    return search


def evaluate_system(index: Index | TrainingIndex, retriever: DualEncoder, reader: DecoderReader, sets: dict[str, list[QARecord]],
                    k: int, em_limit: int) -> dict[str, Any]:
    """recall@1/5/20 on every question of each set, EM/F1 on a seeded sub-sample of `em_limit` of them."""
    retriever.eval()
    out = {}
    for name, records in sets.items():
        answers, _ = evaluate_qa(Pipeline(index, reader, retriever=retriever), sample(records, em_limit, 0),  # type: ignore[arg-type]
                                 k=k, mode="dense", batch_size=4, progress=False)
        out[name] = system_recall(index, retriever, records) | {"em_n": answers["n"], "em": answers["em"], "f1": answers["f1"]}
        log(name, json.dumps(out[name]))
    return out


def table(result: dict[str, Any]) -> str:
    """The README table: one row before training, one per loss after; two columns per set measured (the issue's, then
    the held-out ones)."""
    names = list(result.get("before", {}))
    head = ("| system | " + " | ".join(f"{name} recall@5 dense (hybrid) | EM" for name in names) + " | train seconds |\n"
            + "|---" * (2 * len(names) + 2) + "|")
    rows = [("untrained (MiniLM dense, SmolLM2-135M)", result.get("before"), None)]
    rows += [(f"after `{loss}`", run.get("after"), run.get("seconds")) for loss, run in result.get("runs", {}).items()]
    lines = [head]
    for name, figures, seconds in rows:
        if not figures:
            continue
        cells = [f"{f['recall@5']:.3f} ({format(f['hybrid_recall@5'], '.3f') if 'hybrid_recall@5' in f else '-'}) | "
                 f"{f['em']:.3f} (n={f['em_n']})" if (f := figures.get(s)) else "- | -" for s in names]
        lines.append(f"| {name} | {' | '.join(cells)} | {seconds or '-'} |")
    return "\n".join(lines)


def same_setting(name: str, made: Any, asked: Any) -> bool:
    """Whether a result file's setting and the one asked for now are the same: --adapter by any path to its folder."""
    if name == "adapter" and made is not None and asked is not None:
        return Path(made).resolve() == Path(asked).resolve()
    return made == asked


def check_resumable(folder: Path, args: argparse.Namespace) -> None:
    """Exit with a message when the run in `folder` was started with settings other than this invocation's:
    `--resume` continues with the saved ones, which would silently ignore the new flags."""
    # Older runs lack the newer options: they ran as those options' defaults.
    saved = ({"candidates": 0, "candidates_from": "dense", "in_batch_negatives": False, "reader_first": 0, "held_out_share": 0.0}
             | json.loads((folder / "config.json").read_text()))
    changed = [f"--{name.replace('_', '-')} {saved.get(name)} there, {getattr(args, name)} here"
               for name in ("top_k", "candidates", "candidates_from", "in_batch_negatives", "reader_first", "held_out_share", "steps", "batch_size", "max_passage_tokens", "retriever_lr", "bf16", "device")
               if saved.get(name) != getattr(args, name)]
    # rag-train joint saves the adapter's path absolute (older runs: as given, relative to the repository, where the bench runs).
    if not same_setting("adapter", saved.get("adapter"), args.adapter):
        changed.append(f"--adapter {saved.get('adapter')} there, {args.adapter} here")
    # A query-side run is saved as refresh "none", as is a both-sides run that never refreshes.
    sides = ("--query-side-only" if saved.get("query_side_only") else f"--refresh {saved.get('refresh', 'none')}",
             f"--refresh {args.refresh}" if args.refresh else "--query-side-only")
    if sides[0] != sides[1]:
        changed.append(f"{sides[0]} there, {sides[1]} here")
    if changed:
        sys.exit(f"{folder} holds a run started with other settings ({'; '.join(changed)}): "
                 "pass the same settings to resume it, or another --runs folder to start afresh")


# The settings a result file's figures depend on, kept in it as "scale".
SCALE = ("steps", "batch_size", "top_k", "candidates", "candidates_from", "in_batch_negatives", "reader_first", "adapter",
         "max_passage_tokens", "retriever_lr", "limit", "em_limit", "bf16", "device", "refresh", "held_out_share")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--losses", nargs="+", default=["emdr2", "pdist", "loop", "rag"], choices=["emdr2", "pdist", "loop", "rag"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=0, help="passages the retriever's loss ranks (0: --top-k)")
    parser.add_argument("--candidates-from", choices=CANDIDATE_SOURCES, default=JointTrainingConfig.candidates_from,
                        help="rag-train joint's: the dense top alone, or fused with BM25's best (default %(default)s)")
    parser.add_argument("--in-batch-negatives", action="store_true",
                        help="rank each question's candidates among its whole micro-batch's (rag-train joint --in-batch-negatives)")
    parser.add_argument("--reader-first", type=int, default=0, help="steps the reader trains alone before the retriever's loss starts")
    parser.add_argument("--adapter", default=None,
                        help="a trained reader LoRA (rag-train reader --out) each run starts from, as rag-train joint --adapter")
    parser.add_argument("--max-passage-tokens", type=int, default=JointTrainingConfig.max_passage_tokens,
                        help="rag-train joint's (default %(default)s)")
    parser.add_argument("--retriever-lr", type=float, default=2e-5)
    parser.add_argument("--held-out-share", type=float, default=HELD_OUT_SHARE,
                        help="share of the training files' articles whose questions never train and are measured as well, to choose "
                             "settings on (default %(default)s; 0: train on all, as the runs before 2026-12-05 did)")
    parser.add_argument("--limit", type=int, default=500, help="questions per set for recall (seeded sample, seed 0)")
    parser.add_argument("--em-limit", type=int, default=100, help="of those, questions answered for EM")
    parser.add_argument("--runs", type=Path, default=Path("runs/joint-bench"), help="folder of the training runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/joint_training.json; with another --limit, joint_training_limitN.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in each training run")
    parser.add_argument("--bf16", action="store_true", help="train with bf16 autocast (about 2x faster on a CPU with avx512_bf16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the training runs and the system is evaluated")
    parser.add_argument("--refresh", default=None, metavar="SPEC",
                        help="train both sides with this index refresh (every:N or rerank:L); default: query side only")
    parser.add_argument("--save-every", type=int, default=25,
                        help="steps between each run's checkpoints, so an interrupted bench resumes (0: at the end only)")
    args = parser.parse_args()
    if not 0 <= args.held_out_share < 1:
        parser.error(f"--held-out-share is a share of the articles, from 0 to below 1; got {args.held_out_share}")
    out = results_out(parser, args, default_out(__file__))
    torch.set_num_threads(args.threads)
    info = machine_info()
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    # write_result stamps this invocation's command and machine; earlier invocations' stamps are kept in a list,
    # since the machine an earlier one trained on is part of its figures.
    earlier = [{"command": c} for c in result.pop("earlier_commands", [])] + result.pop("earlier_invocations", [])
    if "command" in result:
        earlier.append({k: result.pop(k) for k in ("command", "timestamp", "machine") if k in result})
    if earlier:
        result["earlier_invocations"] = earlier
    result.setdefault("runs", {})
    scale = {k: getattr(args, k) for k in SCALE}
    # A file's figures hold for the settings that made them: a rerun may add what it lacks, never mix in other settings.
    if result["runs"] or "before" in result:
        kept = result.get("scale", {})
        # A setting a file predates was at what is now its default; --held-out-share's before it: every article (0).
        made = {k: kept.get(k, 0.0 if k == "held_out_share" else parser.get_default(k)) for k in SCALE}
        differing = [f"--{k.replace('_', '-')} {made[k]}" for k in SCALE if not same_setting(k, made[k], scale[k])]
        if differing:
            sys.exit(f"{out} holds figures made with {', '.join(differing)}: pass the same to complete it, or another --out")
    result["scale"] = scale
    result["scale"]["note"] = (f"{args.device}: {'query side only' if not args.refresh else 'both sides, refresh ' + args.refresh}, "
                               "steps x batch-size training questions, EM on a sub-sample")
    index = Index.open(args.index, readonly=True)
    sets = question_sets(args.limit)
    if args.held_out_share:
        sets |= held_out_sets(index, args.limit, args.held_out_share)
    unmeasured = {name: records for name, records in sets.items() if name not in result.get("before", {})}
    if unmeasured:
        log("before training")
        reader = DecoderReader(GENERATIVE_READER, device=args.device, max_passage_tokens=args.max_passage_tokens)
        result["before"] = result.get("before", {}) | evaluate_system(index, DualEncoder(index.manifest.encoder).to(args.device), reader,
                                                                      unmeasured, args.top_k, args.em_limit)
        write_result(out, result, info)
    if lacks_hybrid(result["before"], index):
        log("hybrid recall before training")
        add_hybrid(result["before"], index, DualEncoder(index.manifest.encoder).to(args.device), sets)
        write_result(out, result, info)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    rag_train = str(Path(sys.executable).with_name("rag-train"))
    for loss in args.losses:
        run = result["runs"].get(loss, {})
        folder = args.runs / loss
        if "command" not in run:
            if (folder / "checkpoint.pt").is_file():
                check_resumable(folder, args)
            command = [rag_train, "joint", "--index", str(args.index), "--train", ",".join(map(str, TRAIN)), "--loss", loss,
                       *(["--refresh", args.refresh] if args.refresh else ["--query-side-only"]), "--top-k", str(args.top_k), "--candidates", str(args.candidates),
                       "--candidates-from", args.candidates_from, *(["--in-batch-negatives"] if args.in_batch_negatives else []),
                       "--reader-first", str(args.reader_first), *(["--adapter", args.adapter] if args.adapter else []), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--max-passage-tokens", str(args.max_passage_tokens), "--retriever-lr", str(args.retriever_lr),
                       "--held-out-share", str(args.held_out_share), "--dev-size", "0", "--dev-eval", "0", "--save-every", str(args.save_every), "--threads", str(args.threads), "--device", args.device,
                       *(["--bf16"] if args.bf16 else []),
                       *(["--resume", str(folder)] if (folder / "checkpoint.pt").is_file() else ["--out", str(folder)])]
            log("train", loss, shlex.join(command))
            summary, typed, seconds = run_rag_eval(command, env, program="rag-train")
            training = json.loads((folder / "training.json").read_text())
            run = {"command": typed, "seconds": seconds, "final_losses": training["final_losses"], "speed": training["speed"],
                   "summary": summary}
            result["runs"][loss] = run
            write_result(out, result, info)
        if "after" not in run or lacks_hybrid(run["after"], index):
            retriever = DualEncoder(str(folder / "export" / "encoder")).to(args.device)
            searched = trained_index(index, folder, retriever) if args.refresh else index
            if "after" in run:
                log("hybrid recall after", loss)
                add_hybrid(run["after"], searched, retriever, sets)
            else:
                log("after", loss)
                reader = DecoderReader(GENERATIVE_READER, adapter=folder / "export" / "reader", device=args.device,
                                       max_passage_tokens=args.max_passage_tokens)
                run["after"] = evaluate_system(searched, retriever, reader, sets, args.top_k, args.em_limit)
            write_result(out, result, info)
    print(table(result))


if __name__ == "__main__":
    main()
