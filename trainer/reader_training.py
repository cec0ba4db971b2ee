"""`rag-train reader`: supervised RAG-tuning of the decoder reader, LoRA (peft) or full finetuning.

Each step reads a batch of (question, top-k passages with the gold one among them, answer) and
minimises the answer's negative log-likelihood, on the answer tokens only. The output folder is a
peft adapter (LoRA) or a whole model (full) that `--adapter` / `--reader` accept, plus
`training.json`: the command, data, steps, time and machine, so the run can be repeated.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from indexer.index import Index
from rag.command_line import check_new_folder, new_run_folder
from rag.fid_reader import FiDReader, GenerativeReader, load_generative_reader
from rag.models import GENERATIVE_READER
from rag.pipeline import Pipeline
from trainer.evaluate import evaluate_qa
from trainer.fit import cycling, fit
from trainer.machine import machine
from trainer.qa_data import QARecord, read_qa, sample, split_train_dev, with_answers
from trainer.reader_data import ReaderExample, build_examples
from trainer.scope_data import check_not_evaluation_only

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ReaderTrainingConfig:
    train: list[Path]
    index: Path
    out: Path
    reader: str = GENERATIVE_READER
    method: str = "lora"  # lora | full
    k: int = 3
    steps: int = 500
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: float = 0.05
    lora_rank: int = 16
    max_passage_tokens: int = 160
    dev_size: int = 200
    dev_eval: int = 100  # dev questions answered at the end (generation is the slow part on a CPU)
    seed: int = 0
    bf16: bool = False
    device: str = "auto"
    command: list[str] = field(default_factory=lambda: list(sys.argv))


def check_training_files(files: Sequence[Path]) -> None:
    """Raise ValueError unless `files` names at least one QA training file, each there and none marked evaluation only."""
    if not files:
        raise ValueError("--train needs at least one QA file (comma-separated)")
    for path in files:
        if not Path(path).is_file():
            raise ValueError(f"training file not found: {path}")
        check_not_evaluation_only(path)


def mixed_records(files: list[Path], dev_size: int, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """Every record of `files`, shuffled by `seed`, and `dev_size` of them held out as dev (shared among the files).
    ValueError when the hold-out leaves nothing to train on."""
    train: list[QARecord] = []
    dev: list[QARecord] = []
    for i, path in enumerate(files):
        share = dev_size // len(files) + (i < dev_size % len(files))  # all dev_size of them, even fewer than files
        part_train, part_dev = split_train_dev(read_qa(path), share, seed)
        train += part_train
        dev += part_dev
    if not train:
        raise ValueError(f"--dev-size {dev_size} holds out all {len(dev)} questions of the training files: none is left "
                         "to train on; lower --dev-size or add training questions")
    random.Random(seed).shuffle(train)
    return train, dev


def trainable(records: list[QARecord]) -> list[QARecord]:
    """The records a reader can train on (`with_answers`), in their order, saying on stderr how many were left out.
    Taken after every split and shuffle, so that the others keep their places and the held-out articles stay the same
    (the 20 blank records of nq-open-train are the only ones to ask about 15 of its articles). ValueError when every one
    of them is blank."""
    kept = with_answers(records)
    if left_out := len(records) - len(kept):
        print(f"left out {left_out} training record{'s' * (left_out > 1)} whose answers are all blank (nothing to learn from)",
              file=sys.stderr)
    if records and not kept:  # none at all is the caller's to explain (what held them out)
        raise ValueError("no training record has an answer that is not blank: a reader needs answers to learn from")
    return kept


def load_train_dev(files: list[Path], needed: int, dev_size: int, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """Train and dev records mixed from all files (`mixed_records`); only as many train records as the run can use,
    those with an answer (`trainable`). Dev keeps every record, as an evaluation does."""
    train, dev = mixed_records(files, dev_size, seed)
    return trainable(train)[:needed], dev


def trainable_parameters(reader: GenerativeReader, method: str, lora_rank: int, adapter: Path | None = None) -> list[torch.nn.Parameter]:
    """Make the reader trainable by `method` (lora: wraps its model in a peft LoRA model, a fresh one of rank
    `lora_rank` or the trained one in folder `adapter`, which trains on; full) and return the trainable parameters."""
    if method == "lora" and adapter is not None:
        from peft import PeftModel

        try:
            reader.model = PeftModel.from_pretrained(reader.model, str(adapter), is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as exc:  # e.g. trained over another base model
            raise ValueError(f"adapter {adapter} does not fit reader {reader.name}: {str(exc).splitlines()[0]}") from exc
    elif method == "lora":
        from peft import LoraConfig, get_peft_model

        # An encoder-decoder's linear layers have other names in each family (T5: q, wi; BART: q_proj, fc1): all of them.
        seq2seq = isinstance(reader, FiDReader)
        lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05, target_modules="all-linear" if seq2seq else LORA_TARGETS,
                          task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
        reader.model = get_peft_model(reader.model, lora)
    elif method != "full":
        raise ValueError(f"unknown method {method!r}: choose lora or full")
    return [p for p in reader.model.parameters() if p.requires_grad]


def train_reader(config: ReaderTrainingConfig, progress: bool = True) -> dict:
    """Train, save to `config.out`, evaluate on the held-out dev questions; returns the run's record. A run that does
    not finish training leaves --out as it found it (`new_run_folder`)."""
    check_new_folder(config.out)
    check_training_files(config.train)
    torch.manual_seed(config.seed)
    with Index.open(config.index, readonly=True) as index, new_run_folder(config.out) as run:
        train_records, dev_records = load_train_dev(config.train, config.steps * config.batch_size * config.grad_accum,
                                                   config.dev_size, config.seed)
        examples = build_examples(index, train_records, config.k, seed=config.seed, mode=index.default_mode, progress=progress)
        reader = load_generative_reader(config.reader, device=config.device, max_passage_tokens=config.max_passage_tokens)
        trainable_parameters(reader, config.method, config.lora_rank)
        reader.model.train()

        with open(config.out / "metrics.jsonl", "w") as log:
            fitted = fit(reader.model, cycling(examples, config.batch_size), lambda batch: (answer_nll(reader, batch), {}), log, steps=config.steps, lr=config.lr,
                         weight_decay=0.0, warmup=config.warmup, bf16=config.bf16, desc="train reader", grad_accum=config.grad_accum,
                         progress=progress)
        reader.model.eval()
        reader.model.save_pretrained(config.out)
        if config.method == "full":
            reader.tokenizer.save_pretrained(config.out)
        run.saved = True  # the trained reader stays, whatever becomes of its dev evaluation (minutes of generation)
        if config.method == "lora":
            reader.model = reader.model.merge_and_unload()
        dev_summary = {}
        if config.dev_eval and dev_records:
            # A seeded sample: the held-out records come file by file, so their first ones are all of the first file's.
            dev_summary, _ = evaluate_qa(Pipeline(index, reader), sample(dev_records, config.dev_eval, config.seed), k=config.k,
                                         mode=index.default_mode, progress=progress)
        record = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "train": [str(p) for p in config.train],
            "examples": len(examples),
            "examples_with_gold_passage": sum(e.gold_position is not None for e in examples),
            "train_seconds": round(fitted.seconds, 1),
            "final_loss": fitted.final_loss,
            "dev": dev_summary,
            "machine": machine() | {"device": str(reader.device), "bf16": config.bf16},
        }
        record["config"]["train"] = [str(p) for p in config.train]
        (config.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        return record


def answer_nll(reader: GenerativeReader, batch: list[ReaderExample]) -> torch.Tensor:
    """Mean negative log-likelihood per answer token of a batch, each answer given its passages."""
    logprobs, lengths = reader.read_logprobs([e.question for e in batch], [e.passages for e in batch], [e.answer for e in batch])
    return -logprobs.sum() / lengths.sum()
