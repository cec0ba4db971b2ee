"""`rag-train fewshot`: finetune the decoder reader on a few labelled examples of a new task.

Methods, all through peft except the baseline: LoRA, (IA)³ (learned rescaling vectors of the keys,
values and feed-forward activations, as T-Few), prompt tuning (learned virtual tokens before every
prompt), and full finetuning for comparison. Classification and multiple choice train as T-Few does:
the right choice's per-token negative log-likelihood plus the cross-entropy of rank classification
over all choices (length-normalised scores, `rag.rank_classification`); T-Few's unlikelihood term is
left out. QA trains on the answer's negative log-likelihood, given the retrieved passages with
`--retrieval` (the passages the reader will see when asked, from the index). `--train-query-encoder`
also trains the query side of the retriever (query-side: the passage vectors in the index stay valid)
by perplexity distillation, as Atlas does: over each question's retrieved passages, the retriever's
distribution softmax(s_k / tau) learns the reader's softmax(log p(answer | question, d_k) / T).

The output folder is a peft adapter (or, for `full`, a whole model) plus `fewshot.json`: the task,
method, shots, seed, settings, training time and size, so `rag-eval fewshot --adapter DIR` knows what
it is.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import get_linear_schedule_with_warmup

from indexer.encoder import encoder_input
from indexer.index import Index
from rag.adapters import QUERY_ENCODER
from rag.command_line import (add_optimizer_options, add_run_options, check_counts, check_new_folder, check_warmup, finite_float,
                              new_run_folder, run_command, typed_command)
from rag.models import GENERATIVE_READER, resolve_reader_path
from rag.rank_classification import choice_scores
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from trainer.fewshot_prompts import DEFAULT_INDEX, open_index, prompt_ids, retrieve
from trainer.fewshot_tasks import Example, FewShotTask, load_task
from trainer.fit import check_finite
from trainer.qa_data import ContextPassage
from trainer.reader_data import ReaderExample
from trainer.reader_training import LORA_TARGETS, answer_nll

METHODS = ("lora", "ia3", "prompt", "full")
# Learning rates for short runs (tens of steps on 32 shots): common values for each method, raised for the
# few steps a CPU allows (T-Few's (IA)3 uses 3e-3 for 1,000 steps). Not tuned per task.
DEFAULT_LR = {"lora": 1e-3, "ia3": 3e-2, "prompt": 1e-1, "full": 5e-5}
RECORD = "fewshot.json"


@dataclass
class FewShotConfig:
    """One `rag-train fewshot` run: the task and its shots, the method, retrieval, optimisation and machine."""

    task: str
    out: Path
    shots: int = 32
    method: str = "lora"
    retrieval: bool | None = None  # None: the task's default (QA tasks with an index retrieve)
    index: Path | None = None  # None: indexes/shared of this repository
    k: int = 3  # passages per question with retrieval
    reader: str = GENERATIVE_READER
    steps: int = 24  # 3 epochs of 32 shots at batch 4: minutes on a CPU
    batch_size: int = 4
    lr: float | None = None  # None: DEFAULT_LR of the method
    warmup: float = 0.06
    lora_rank: int = 8
    virtual_tokens: int = 20
    max_passage_tokens: int = 160
    train_query_encoder: bool = False
    query_lr: float = 1e-5
    tau: float = 0.1  # retriever temperature over cosine scores
    temperature: float = 1.0  # of the reader's log-likelihoods in the distillation target
    seed: int = 0
    bf16: bool = False
    threads: int = 0  # torch threads, 0 = torch's default
    device: str = "cpu"
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown --method {self.method!r}: choose {', '.join(METHODS)}")
        # lr None is the method's default (DEFAULT_LR); any other must be a learning rate.
        check_counts(self, at_least_one=("shots", "steps", "batch_size", "k", "lora_rank", "virtual_tokens"), at_least_zero=("threads",),
                     positive=("query_lr", "tau", "temperature") + (("lr",) if self.lr is not None else ()))
        check_warmup(self.warmup)


def add_method(reader: DecoderReader, config: FewShotConfig, task: FewShotTask) -> list[torch.nn.Parameter]:
    """Wrap the reader's model for the method (peft), and return the parameters that train."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model

    if config.method == "lora":
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    elif config.method == "ia3":
        peft_config = IA3Config(task_type="CAUSAL_LM")  # peft's defaults for Llama: k_proj, v_proj, down_proj
    elif config.method == "prompt":
        # Started from the task's own instruction, which trains faster than random vectors (Lester et al.).
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.virtual_tokens,
                                         prompt_tuning_init="TEXT", prompt_tuning_init_text=task.instruction,
                                         tokenizer_name_or_path=resolve_reader_path(config.reader))
    else:
        return list(reader.model.parameters())
    reader.model = get_peft_model(reader.model, peft_config)
    return [p for p in reader.model.parameters() if p.requires_grad]


def example_loss(reader: DecoderReader, task: FewShotTask, batch: list[tuple[Example, list]]) -> torch.Tensor:
    """The batch's mean loss: T-Few's LM + length-normalised rank loss for choices, the answer's NLL for QA."""
    if task.is_qa:
        return answer_nll(reader, [ReaderExample(e.text, passages, e.target, None) for e, passages in batch])
    prompts = [prompt_ids(reader, task, e) for e, _ in batch]
    losses = []
    for (example, _), scores in zip(batch, choice_scores(reader, prompts, [e.choices for e, _ in batch])):
        label = torch.tensor(example.label, device=scores.device)
        losses.append(-scores[label] + torch.nn.functional.cross_entropy(scores.unsqueeze(0), label.unsqueeze(0)))
    return torch.stack(losses).mean()


@dataclass
class QuerySide:
    """The query encoder trained beside the reader, and the frozen passage vectors of each shot's retrieved passages."""

    encoder: DualEncoder
    passage_vectors: list[torch.Tensor]  # per shot: (k, dim)

    @classmethod
    def start(cls, index: Index, passages: list[list[ContextPassage]]) -> QuerySide:
        """The index's own encoder as the starting query side; passages embedded once by its passage side."""
        encoder = DualEncoder(index.manifest.encoder, shared=False)
        encoder.passage_model.requires_grad_(False)
        vectors = [torch.from_numpy(encoder.encode([encoder_input(p.title, p.text) for p in row], "passage")) for row in passages]
        return cls(encoder, vectors)

    def loss(self, reader: DecoderReader, batch: list[tuple[Example, list[ContextPassage]]], positions: list[int],
             tau: float, temperature: float) -> torch.Tensor:
        """KL(reader's distribution over each question's passages || the retriever's) for the shots at `positions`;
        the reader's side is a fixed target."""
        queries = self.encoder([e.text for e, _ in batch], "query")
        scores = torch.stack([self.passage_vectors[i] @ q for q, i in zip(queries, positions)])
        with torch.no_grad():
            prompts = [reader.prompt_ids(e.text, [p]) for e, row in batch for p in row]
            sums, lengths = reader.answer_logprobs(prompts, [reader.answer_ids(e.target) for e, row in batch for _ in row])
            target = torch.softmax((sums / lengths).view(scores.shape) / temperature, dim=-1)
        return torch.nn.functional.kl_div(torch.log_softmax(scores / tau, dim=-1), target, reduction="batchmean")


def train_fewshot(config: FewShotConfig) -> dict:
    """Train on `config.shots` seeded training examples of the task and save the adapter; returns the run's record."""
    check_new_folder(config.out)
    task = load_task(config.task)
    retrieval = task.retrieval if config.retrieval is None else config.retrieval
    if config.train_query_encoder and not (retrieval and task.is_qa):
        raise ValueError("--train-query-encoder trains the retriever: it needs a QA task with --retrieval")
    shots = task.shots(config.shots, config.seed)
    index = open_index(task, retrieval, config.index)
    # Taken before the work: a second run into the same folder, or an --out that cannot be made, is refused at once.
    with new_run_folder(config.out) as run:  # a run or a save cut short leaves no half adapter
        passages = retrieve(index, shots, config.k if retrieval else 0)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        reader = DecoderReader(config.reader, device=config.device, max_passage_tokens=config.max_passage_tokens)
        params = add_method(reader, config, task)
        lr = DEFAULT_LR[config.method] if config.lr is None else config.lr
        groups = [{"params": params, "lr": lr}]
        query_side = QuerySide.start(index, passages) if config.train_query_encoder and index is not None else None
        if query_side is not None:
            groups.append({"params": list(query_side.encoder.query_model.parameters()), "lr": config.query_lr})
        started = time.perf_counter()
        losses = _train(reader, task, list(zip(shots, passages)), groups, query_side, config)
        train_seconds = time.perf_counter() - started
        reader.model.save_pretrained(config.out)
        if config.method == "full":
            reader.tokenizer.save_pretrained(config.out)
        if query_side is not None:
            query_side.encoder.save_query_encoder(config.out / QUERY_ENCODER)
        run.saved = True
        record = {
            "task": task.name, "method": config.method, "shots": config.shots, "seed": config.seed, "retrieval": retrieval,
            "k": config.k if retrieval else 0, "index": str(config.index) if retrieval and config.index else None,
            "query_encoder": QUERY_ENCODER if query_side is not None else None,
            "reader": config.reader, "lr": lr, "steps": config.steps, "batch_size": config.batch_size,
            "train_seconds": round(train_seconds, 2), "trainable_parameters": sum(p.numel() for p in params),
            "first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "saved_bytes": sum(f.stat().st_size for f in config.out.rglob("*") if f.is_file()),
            "threads": torch.get_num_threads(), "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        }
        (config.out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _train(reader: DecoderReader, task: FewShotTask, pairs: list[tuple[Example, list[ContextPassage]]], groups: list[dict[str, Any]],
           query_side: QuerySide | None, config: FewShotConfig) -> list[float]:
    """`config.steps` AdamW steps over the shots (`pairs`, with their passages) in seeded epochs; each step's loss.
    TrainingDiverged where a loss or gradient stops being finite."""
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup * config.steps), config.steps)
    autocast = torch.autocast(reader.device.type, dtype=torch.bfloat16, enabled=config.bf16)
    rng = random.Random(config.seed)
    order: list[int] = []
    losses: list[float] = []
    reader.model.train()
    for step in range(1, config.steps + 1):
        positions: list[int] = []
        while len(positions) < min(config.batch_size, len(pairs)):
            if not order:  # a new epoch over the shots, in a new order
                order = rng.sample(range(len(pairs)), len(pairs))
            positions.append(order.pop())
        batch = [pairs[i] for i in positions]
        with autocast:
            loss = example_loss(reader, task, batch)
            if query_side is not None:
                loss = loss + query_side.loss(reader, batch, positions, config.tau, config.temperature)
        loss.backward()
        losses.append(loss.item())
        grad_norm = torch.nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], 1.0)
        check_finite(step, losses[-1], float(grad_norm), "try a lower --lr" + (" or --query-lr" if query_side else ""))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    reader.model.eval()
    return losses


def read_record(folder: Path) -> dict:
    """The `fewshot.json` of an output folder, or {} for an adapter trained otherwise."""
    path = Path(folder) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.fewshot_training` (and of `rag-train fewshot`, which takes them as a parent)."""
    d = FewShotConfig(task="", out=Path())
    parser = argparse.ArgumentParser(prog="python -m trainer.fewshot_training", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Finetune the decoder reader on N examples of a task (LoRA, (IA)3, prompt tuning "
                                                 "or full) and save a small adapter that --adapter and /ask load (full: a whole model, which "
                                                 "`rag-eval fewshot --adapter` loads too, and --reader elsewhere). Learning rate "
                                                 f"by method unless --lr: {DEFAULT_LR}.")
    add = parser.add_argument
    add("--task", required=True, help="a built-in task (superglue-boolq/-rte/-cb/-copa/-wic, sst2, trec, nq-open) or a task folder")
    add("--shots", type=int, default=d.shots, help="training examples (a seeded sample of the task's train split)")
    add("--method", choices=METHODS, default=d.method, help="what trains")
    add("--retrieval", action=argparse.BooleanOptionalAction, default=None,
        help="QA: retrieved passages in the prompt (default: the task's own setting, on for nq-open)")
    add("--index", type=Path, default=None, help=f"index to retrieve from (None: {DEFAULT_INDEX})")
    add("--k", type=int, default=d.k, help="passages per question with --retrieval")
    add("--train-query-encoder", action="store_true",
        help="with --retrieval: also train the retriever's query encoder (query-side, perplexity distillation)")
    add("--query-lr", type=finite_float, default=d.query_lr, help="learning rate of the query encoder")
    add("--out", required=True, type=Path, help="output folder (new or empty): the adapter and fewshot.json")
    add("--reader", default=d.reader, help="base causal LM")
    add_optimizer_options(parser, d, "examples")
    add("--lora-rank", type=int, default=d.lora_rank, help="LoRA rank")
    add("--virtual-tokens", type=int, default=d.virtual_tokens, help="prompt tuning: virtual tokens")
    add_run_options(parser, d, "seed of the shots, their order and the initialisation")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = FewShotConfig(
        task=args.task, out=args.out, shots=args.shots, method=args.method, retrieval=args.retrieval, index=args.index, k=args.k,
        train_query_encoder=args.train_query_encoder, query_lr=args.query_lr,
        reader=args.reader, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, lora_rank=args.lora_rank,
        virtual_tokens=args.virtual_tokens, seed=args.seed, bf16=args.bf16, threads=args.threads, device=args.device,
        command=typed_command("trainer.fewshot_training"),
    )
    record = train_fewshot(config)
    print(json.dumps({k: record[k] for k in ("task", "method", "shots", "seed", "train_seconds", "trainable_parameters",
                                             "saved_bytes", "first_loss", "final_loss")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m trainer.fewshot_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
