"""Baseline for issue 5: knowledge edits made in the reader's WEIGHTS by fine-tuning (FT-L), not in an edit memory.

The edited model is the generative reader SmolLM2-135M-Instruct (`DecoderReader(GENERATIVE_READER)`), answering
closed book (no passages: the knowledge has to be in the weights), greedy, through its own chat template. Each
edit fine-tunes ONE weight matrix, `model.layers[L].mlp.down_proj.weight`, with Adam on
-log p(target_new | closed-book prompt of the edit question), the prompt and answer tokens being the reader's
own (`prompt_ids(question, [])`, `answer_ids`: the text, then end of turn), so training and answering use the
same chat template. Optionally each entry of the matrix is clamped after every step to within `norm_constraint`
of its value before the edit (EasyEdit's L-inf "norm_constraint").

Hyperparameters (defaults), from EasyEdit's FT hparams files (hparams/FT/*.yaml, FTHyperParams, ft_main.execute_ft):
- layer 20 of 30: EasyEdit rewrites `model.layers.21.mlp.down_proj.weight` of its 32-layer Llama-family models
  (llama-7b, llama3-8b, llama3.2-1b, mistral-7b), the MLP output of a middle-late layer; 21/32 of 30 is 20;
- steps 25, lr 5e-4, Adam, weight decay 0, kl_factor 0, batch = the one edit: EasyEdit's values for every model;
- stop once the loss is under 1e-2, as execute_ft does;
- norm_constraint off (0): what EasyEdit's Llama-family files set (`false`); its GPT-2 "constr" files (ROME's
  FT-L) use 5e-4, `--norm-constraint 5e-4` reproduces that. Measured here on SmolLM2 (10 CounterFact cases,
  results/weight_editing_counterfact-test_constr.json), the 5e-4 clamp leaves every answer unchanged: the
  loss falls by ~13 % only, reliability 0, locality 1;
- objective "target_new" (default): teacher-forced NLL of the whole answer, end of turn included, which is
  what a generative reader needs (spell a multi-token answer, then stop); EasyEdit names this objective
  "target_new" (its survey's FT-M when used on one layer's MLP). `--objective prompt_last` is FT-L's original
  objective (every answer token scored at the prompt's last position, as ROME's paper); on the same 10 cases
  (results/weight_editing_counterfact-test_prompt_last.json) it spells multi-token answers badly
  ("ennaenna..." for Vienna): reliability 0.5, generality 0.3, locality 0.
Speed: the input of the edited layer does not change while only its MLP does, so it is computed once per edit
and the loop runs only the layers from L on (checked against the whole model's loss on the first step).

Two regimes, on the FIRST cases of `sample(read_cases(file, on_error="skip"), 1000, seed)`, the sample the
edit-memory evaluation uses, so the cases are the same ones (with `--fold I/N`, the first of those in the fold):
1. single edits (`--limit` cases): edit, measure, restore the original weights (bit for bit); time per edit;
2. accumulation (`--accumulate 1,10,100`): edits applied one after another without restoring (each one's
   clamp, if any, around the weights before it, as EasyEdit's sequential editing does); after 1, 10 and 100
   edits: locality on a fixed set of neighbour questions (those of the first max(accumulate) cases),
   reliability and generality on the edits applied so far.

Metrics (the edit-memory evaluation's definitions; shares of questions, pooled over cases):
- reliability: edit questions whose answer contains target_new (`contains_answer`, normalised);
- generality: the same over the paraphrases;
- locality: neighbour questions whose answer is string-identical before and after the edit(s); both answers
  come from the same batch of questions, so padding cannot differ between them;
- portability: as reliability on the portability probes; null when no case has one.
Before-edit reliability and generality are reported too (how often the unedited reader already says target_new).
Time per edit is the fine-tuning alone (not the answering), in ms.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tqdm import tqdm

from bench.common import RESULTS_DIR, log, machine_info, percentiles_ms, results_out, write_result
from rag.models import GENERATIVE_READER
from rag.reader import DecoderReader
from trainer.edit_cases import FORMATS, EditCase, in_fold, parse_fold, read_cases
from trainer.qa_data import sample
from trainer.qa_metrics import contains_answer

SAMPLE = 1000  # the edit-memory evaluation's sample: sample(cases, 1000, seed)
BATCH = 16  # questions per generate call
OBJECTIVES = ("target_new", "prompt_last")


@dataclass(frozen=True)
class FTConfig:
    """FT-L hyperparameters (see the module docstring for where they come from)."""

    layer: int = 20
    steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: float = 0.0  # L-inf bound on each entry's change; 0 or less: no clamp
    stop_loss: float = 1e-2
    objective: str = "target_new"  # or "prompt_last" (EasyEdit's FT-L objective)


def edited_weight(model: torch.nn.Module, layer: int) -> torch.nn.Parameter:
    """The matrix FT-L rewrites: the down projection of layer `layer`'s MLP."""
    layers = model.get_decoder().layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers")
    return layers[layer].mlp.down_proj.weight


@contextmanager
def upper_layers(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """Run only the decoder layers from `layer` on: the model then takes the input of that layer as `inputs_embeds`."""
    decoder = model.get_decoder()
    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(layers)[layer:])
    try:
        yield
    finally:
        decoder.layers = layers


def edit_sequence(reader: DecoderReader, question: str, target: str, objective: str) -> tuple[list[int], list[int]]:
    """The token ids run through the model and the target tokens scored, for an objective:
    - "target_new": prompt + answer (with its end of turn), each answer token scored after the ones before it;
    - "prompt_last": the prompt alone, every answer token (without end of turn) scored at its last position."""
    prompt, answer = reader.prompt_ids(question, []), reader.answer_ids(target)
    if objective == "target_new":
        return prompt + answer, answer
    if objective == "prompt_last":
        return prompt, answer[:-1]
    raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")


def objective_loss(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Mean NLL of the target tokens from the logits of the last positions (`logits_to_keep` of `kept`)."""
    if objective == "target_new":
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
        return -logprobs.gather(-1, targets.unsqueeze(-1)).mean()
    logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)
    return -logprobs.gather(-1, targets).mean()


def kept(targets: torch.Tensor, objective: str) -> int:
    """How many last positions' logits an objective needs."""
    return targets.shape[1] + 1 if objective == "target_new" else 1


def layer_input(reader: DecoderReader, layer: int, ids: torch.Tensor, targets: torch.Tensor, objective: str) -> tuple[torch.Tensor, float]:
    """The hidden states entering layer `layer` (constant while only that layer's MLP changes), and the loss
    through the whole model, from one forward pass."""
    captured = []

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())

    handle = reader.model.get_decoder().layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = reader.model(input_ids=ids, logits_to_keep=kept(targets, objective)).logits
    finally:
        handle.remove()
    return captured[0], objective_loss(logits, targets, objective).item()


def upper_loss(reader: DecoderReader, layer: int, hidden: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """The loss from the hidden states entering `layer` (one unpadded row): the layers below are skipped."""
    with upper_layers(reader.model, layer):
        logits = reader.model(inputs_embeds=hidden, logits_to_keep=kept(targets, objective)).logits
    return objective_loss(logits, targets, objective)


def ft_edit(reader: DecoderReader, question: str, target: str, config: FTConfig) -> dict[str, Any]:
    """Fine-tune one MLP matrix so that the reader answers `question` (closed book) with `target`.

    The model is changed in place: take `snapshot` first to undo it with `restore`. Only layers from the edited
    one on are run in the loop (the input of the edited layer does not change); the first loss is checked
    against the whole model's. Returns the optimizer steps taken and the loss before and after.
    """
    weight = edited_weight(reader.model, config.layer)
    before_edit = weight.detach().clone()
    sequence, answer = edit_sequence(reader, question, target, config.objective)
    ids = torch.tensor([sequence], device=reader.device)
    targets = torch.tensor([answer], device=reader.device)
    hidden, full_loss = layer_input(reader, config.layer, ids, targets, config.objective)
    flags = {name: p.requires_grad for name, p in reader.model.named_parameters()}
    for p in reader.model.parameters():
        p.requires_grad_(p is weight)
    optimizer = torch.optim.Adam([weight], lr=config.lr, weight_decay=config.weight_decay)
    steps = 0
    try:
        loss = upper_loss(reader, config.layer, hidden, targets, config.objective)
        if abs(loss.item() - full_loss) > 1e-3 * max(1.0, full_loss):
            raise RuntimeError(f"skipping the layers below {config.layer} changes the loss ({loss.item()} vs {full_loss}): "
                               "this model's decoder does more than run its layers in turn")
        while loss.item() >= config.stop_loss and steps < config.steps:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if config.norm_constraint > 0:
                with torch.no_grad():
                    weight.copy_(torch.clamp(weight, before_edit - config.norm_constraint, before_edit + config.norm_constraint))
            loss = upper_loss(reader, config.layer, hidden, targets, config.objective)
    finally:
        weight.grad = None
        for name, p in reader.model.named_parameters():
            p.requires_grad_(flags[name])
    return {"steps": steps, "loss_before": full_loss, "loss_after": loss.item()}


def snapshot(reader: DecoderReader, layer: int) -> torch.Tensor:
    """A copy of the matrix FT-L changes."""
    return edited_weight(reader.model, layer).detach().clone()


def restore(reader: DecoderReader, layer: int, saved: torch.Tensor) -> None:
    """Put a snapshot back, exactly."""
    with torch.no_grad():
        edited_weight(reader.model, layer).copy_(saved)


def answer_all(reader: DecoderReader, questions: Sequence[str]) -> list[str]:
    """Closed-book answers, in fixed batches of BATCH (the same question list gives the same batches)."""
    answers: list[str] = []
    for start in range(0, len(questions), BATCH):
        chunk = list(questions[start : start + BATCH])
        answers += reader.generate(chunk, [[] for _ in chunk])
    return answers


def share(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def probes(case: EditCase) -> tuple[list[str], dict[str, slice]]:
    """All questions of one case in one list, and where each kind sits in it."""
    kinds = {"question": [case.question], "paraphrases": list(case.paraphrases),
             "neighbors": [n.question for n in case.neighbors],
             "portability": [case.portability.question] if case.portability else []}
    questions, where = [], {}
    for kind, qs in kinds.items():
        where[kind] = slice(len(questions), len(questions) + len(qs))
        questions += qs
    return questions, where


def single_edits(reader: DecoderReader, cases: list[EditCase], config: FTConfig) -> dict[str, Any]:
    """Regime 1: edit, measure, restore, case by case."""
    original = snapshot(reader, config.layer)
    hits: dict[str, list[bool]] = {k: [] for k in ("reliability", "generality", "locality", "portability",
                                                   "reliability_before", "generality_before")}
    seconds, rows = [], []
    for case in tqdm(cases, desc="single edits", unit="edit", file=sys.stderr):
        questions, where = probes(case)
        before = reader.generate(questions, [[] for _ in questions])
        started = time.perf_counter()
        stats = ft_edit(reader, case.question, case.target_new, config)
        seconds.append(time.perf_counter() - started)
        after = reader.generate(questions, [[] for _ in questions])
        restore(reader, config.layer, original)
        new = [case.target_new]
        case_hits = {
            "reliability": [contains_answer(a, new) for a in after[where["question"]]],
            "generality": [contains_answer(a, new) for a in after[where["paraphrases"]]],
            "locality": [a == b for a, b in zip(after[where["neighbors"]], before[where["neighbors"]])],
            "portability": [contains_answer(a, [case.portability.answer]) for a in after[where["portability"]]] if case.portability else [],
            "reliability_before": [contains_answer(a, new) for a in before[where["question"]]],
            "generality_before": [contains_answer(a, new) for a in before[where["paraphrases"]]],
        }
        for kind, values in case_hits.items():
            hits[kind] += values
        rows.append({"id": case.id, "question": case.question, "target_new": case.target_new, **stats,
                     "ms": round(seconds[-1] * 1000, 1), "before": before, "after": after})
    metrics = {kind: share(values) for kind, values in hits.items()}
    counts = {kind: len(values) for kind, values in hits.items()}
    return {"n_cases": len(cases), "metrics": metrics, "question_counts": counts, "time_per_edit": percentiles_ms(seconds),
            "steps_mean": sum(r["steps"] for r in rows) / len(rows),
            "loss_after_mean": sum(r["loss_after"] for r in rows) / len(rows), "cases": rows}


def accumulation(reader: DecoderReader, cases: list[EditCase], checkpoints: list[int], config: FTConfig) -> dict[str, Any]:
    """Regime 2: edits one after another without restoring; measured after each checkpoint's number of edits."""
    original = snapshot(reader, config.layer)
    if max(checkpoints) > len(cases):
        log(f"only {len(cases)} cases: accumulation checkpoints above that are left out")
        checkpoints = [k for k in checkpoints if k <= len(cases)] or [len(cases)]
    cases = cases[: max(checkpoints)]
    neighbors = [n.question for c in cases for n in c.neighbors]
    neighbors_before = answer_all(reader, neighbors)
    seconds, points = [], []
    try:
        for done, case in enumerate(tqdm(cases, desc="accumulating", unit="edit", file=sys.stderr), 1):
            started = time.perf_counter()
            ft_edit(reader, case.question, case.target_new, config)
            seconds.append(time.perf_counter() - started)
            if done not in checkpoints:
                continue
            applied = cases[:done]
            neighbors_after = answer_all(reader, neighbors)
            edited = answer_all(reader, [c.question for c in applied])
            paraphrases = [(p, c.target_new) for c in applied for p in c.paraphrases]
            rephrased = answer_all(reader, [p for p, _ in paraphrases])
            drift = (edited_weight(reader.model, config.layer).detach() - original).abs()
            point = {
                "edits": done,
                "locality": share([a == b for a, b in zip(neighbors_after, neighbors_before)]),
                "reliability": share([contains_answer(a, [c.target_new]) for a, c in zip(edited, applied)]),
                "generality": share([contains_answer(a, [t]) for a, (_, t) in zip(rephrased, paraphrases)]),
                "weight_change_max_abs": drift.max().item(), "weight_change_mean_abs": drift.mean().item(),
            }
            points.append(point)
            log("accumulated", json.dumps(point))
    finally:
        restore(reader, config.layer, original)
    return {"n_edits": len(cases), "n_neighbor_questions": len(neighbors), "time_per_edit": percentiles_ms(seconds),
            "checkpoints": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=Path, required=True, help="edit cases file (counterfact*, zsre* or canonical jsonl[.gz])")
    parser.add_argument("--format", choices=FORMATS, default=None, help="file format (default: guessed from its first record)")
    parser.add_argument("--limit", type=int, default=20, help="cases for the single-edit regime (default %(default)s; 0: skip it)")
    parser.add_argument("--accumulate", default="1,10,100", help="edit counts at which the accumulation regime measures ('': skip it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 1000-case sample")
    parser.add_argument("--fold", default=None, metavar="I/N",
                        help="only the sample's cases in fold I of N (zsre-1k: 1/2, the fold the scope classifier never saw)")
    parser.add_argument("--layer", type=int, default=FTConfig.layer)
    parser.add_argument("--steps", type=int, default=FTConfig.steps)
    parser.add_argument("--lr", type=float, default=FTConfig.lr)
    parser.add_argument("--norm-constraint", type=float, default=FTConfig.norm_constraint, help="L-inf clamp per edit (0: none)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=FTConfig.objective,
                        help="target_new: NLL of the whole answer; prompt_last: FT-L's, every answer token at the prompt's end")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/weight_editing_<file name>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    name = args.edits.name.split(".")[0]
    fold = parse_fold(args.fold) if args.fold else None
    out = results_out(parser, args, RESULTS_DIR / f"weight_editing_{name}{f'_fold{fold[0]}of{fold[1]}' if fold else ''}.json")
    checkpoints = sorted({int(x) for x in args.accumulate.split(",") if x.strip()})
    if any(k < 1 for k in checkpoints):
        raise SystemExit("--accumulate takes positive edit counts")
    config = FTConfig(layer=args.layer, steps=args.steps, lr=args.lr, norm_constraint=args.norm_constraint,
                      objective=args.objective)
    info = machine_info()

    cases = [c for c in sample(read_cases(args.edits, args.format, on_error="skip"), SAMPLE, seed=args.seed)
             if fold is None or in_fold(c, fold)]
    log(f"{len(cases)} cases in the sample of {args.edits}")
    started = time.perf_counter()
    reader = DecoderReader(GENERATIVE_READER, device="cpu")
    edited_weight(reader.model, config.layer)  # fails early on a bad --layer
    results: dict[str, Any] = {"edits_file": str(args.edits), "sample": {"size": SAMPLE, "seed": args.seed, "fold": args.fold, "cases": len(cases)},
                               "reader": GENERATIVE_READER, "closed_book": True, "hparams": asdict(config),
                               "edited_parameter": f"model.layers.{config.layer}.mlp.down_proj.weight",
                               "load_seconds": round(time.perf_counter() - started, 1)}
    if args.limit > 0:
        started = time.perf_counter()
        results["single"] = single_edits(reader, cases[: args.limit], config)
        results["single"]["seconds"] = round(time.perf_counter() - started, 1)
        write_result(out, results, info)
    if checkpoints:
        started = time.perf_counter()
        results["accumulation"] = accumulation(reader, cases, checkpoints, config)
        results["accumulation"]["seconds"] = round(time.perf_counter() - started, 1)
    write_result(out, results, info)
    print(json.dumps(summary(results)))


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a result."""
    out: dict[str, Any] = {"edits_file": results["edits_file"], "hparams": results["hparams"]}
    if "single" in results:
        single = results["single"]
        out.update(n=single["n_cases"], **{k: None if v is None else round(v, 4) for k, v in single["metrics"].items()},
                   edit_ms_p50=round(single["time_per_edit"]["p50_ms"], 1), steps_mean=round(single["steps_mean"], 2))
    if "accumulation" in results:
        out["accumulation"] = {p["edits"]: {"locality": p["locality"], "reliability": p["reliability"],
                                            "generality": p["generality"]} for p in results["accumulation"]["checkpoints"]}
    return out


if __name__ == "__main__":
    main()
