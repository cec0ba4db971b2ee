"""`rag-train joint`: joint retriever-reader training, EM-style (Atlas, EMDR^2, RAG).

Each step takes a batch of questions, encodes them with the trainable query encoder, retrieves the
top-K passages from the dense index and then
- trains the reader (LoRA by default) with its answer NLL given all K passages in one prompt, as it
  will read them when serving, and
- trains the retriever with the chosen loss (trainer/joint_losses.py) on the scores s_k of those K
  passages, with targets from the reader: log p(a|q,d_k) per passage (emdr2, pdist, rag),
  log p(a|q, D minus d_k) (loop), or, with a Fusion-in-Decoder reader (rag/fid_reader.py), the
  cross-attention its decoder paid each passage in the reading pass itself (adist). With `--candidates C`
  (C > K) the loss ranks the top C instead, each scored alone by the reader (without gradient, but for rag's): a loss over
  the top K can only reorder them, one over C can lift a passage from below the top K into it, which is
  what raises recall@K. `--candidates-from hybrid` fuses the dense top C with BM25's (reciprocal rank fusion, the
  server's default search): BM25 brings in the passages the dense side ranks too low to see, which are the ones
  it has to learn to lift. With `--reader-first N` the retriever's loss waits N steps, while the reader alone
  trains: an untrained reader is a weak teacher. `--adapter DIR` starts instead from a reader LoRA trained
  already (rag-train reader), which trains on.

Stale index strategies (ARCHITECTURE.md) as `--query-side-only` / `--refresh`:
- query-side only: the passage side is the index's stored vectors, frozen; s_k = <E_q(q), v_k>;
- otherwise one shared encoder trains on both sides and s_k = <E_q(q), E_p(d_k)> re-encodes the K
  passages; the index to search is then refreshed `none` (searches the vectors it was built with),
  `every:N` (all passages re-embedded with the current encoder every N steps, a new generation swapped
  in at once) or `rerank:L` (over-retrieve L from the stale vectors, re-embed them, keep the top K).
The user's index is only read: refreshed vectors are generations of a flat FAISS file in RUN_DIR/index
(trainer/training_index.py searches them).

RUN_DIR gets config.json, metrics.jsonl (one JSON line per step, dev evaluation and refresh),
checkpoint.pt (everything an exact resume needs), export/encoder (a folder `rag-index build --encoder`
takes), export/reader (a peft adapter for `--adapter`, or a whole model for `--reader`) and training.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from indexer.index import Index
from indexer.records import SearchHit
from rag.adapters import adapter_kind
from rag.command_line import (add_optimizer_options, add_run_options, check_counts, check_new_folder, check_warmup, config_from_args,
                              finite_float, new_run_folder, resumed_run_folder, run_command, typed_command)
from rag.fid_reader import FiDReader, is_fid_reader, load_generative_reader
from rag.models import GENERATIVE_READER
from rag.pipeline import MAX_K, Pipeline
from rag.reader import pick_device
from rag.retriever import DualEncoder
from trainer.distributed_search import barrier, start_distributed, world
from trainer.evaluate import evaluate_qa
from trainer.fit import TrainingDiverged, check_finite
from trainer.joint_losses import adist_loss, emdr2_loss, in_batch_targets, loop_loss, pdist_loss, rag_marginal_loss
from trainer.qa_data import QARecord, read_qa, sample, split_by_article
from trainer.reader_data import ReaderExample
from trainer.reader_training import answer_nll, check_training_files, load_train_dev, mixed_records, trainable, trainable_parameters
from trainer.scope_data import check_not_evaluation_only
from trainer.machine import machine
from trainer.training_index import (CANDIDATE_SOURCES, TrainingIndex, check_candidate_source, evaluating, hide_own_elsewhere,
                                    passage_scores, rerank)

LOSSES = ("emdr2", "pdist", "loop", "adist", "rag")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Refresh:
    """How the searched vectors follow a changing passage encoder: none, every `n` steps, or rerank `n` candidates."""

    kind: str = "none"  # none | every | rerank
    n: int = 0

    @classmethod
    def parse(cls, text: str) -> Refresh:
        """`none`, `every:N` or `rerank:L` (N, L at least 1)."""
        kind, _, n = text.partition(":")
        if text == "none":
            return cls()
        if kind in ("every", "rerank") and n.isdigit() and int(n) >= 1:
            return cls(kind, int(n))
        raise ValueError(f"--refresh {text!r}: choose none, every:N (re-embed every N steps) or rerank:L (over-retrieve L)")

    def __str__(self) -> str:
        return self.kind if self.kind == "none" else f"{self.kind}:{self.n}"


@dataclass
class JointTrainingConfig:
    """Everything a joint training run depends on; saved in RUN_DIR/config.json, which `--resume` reads back."""

    index: Path
    train: list[Path]
    out: Path
    loss: str = "emdr2"
    dev: Path | None = None  # None: hold out `dev_size` questions of the training files (or the held_out_share articles')
    reader: str = GENERATIVE_READER
    adapter: Path | None = None  # a trained LoRA adapter of the reader (rag-train reader --out) that trains on
    method: str = "lora"  # lora | full
    lora_rank: int = 16
    top_k: int = 4
    candidates: int = 0  # passages per question the retriever's loss spreads over (0: the top_k the reader reads)
    candidates_from: str = "dense"  # dense | hybrid: the dense top fused with BM25's
    refresh: str = "none"
    reader_first: int = 0  # steps the reader trains alone before the retriever's loss starts
    query_side_only: bool = False
    # Rank each question's candidates among every candidate of its micro-batch (DPR's in-batch negatives): the other
    # questions' passages, from other articles, get no target mass (those among its own too are left out there).
    in_batch_negatives: bool = False
    tau: float = 0.05  # retriever temperature: cosine scores of normalised vectors span [-1, 1]
    temperature: float = 1.0  # T of the pdist and loop targets
    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-4  # the reader's (LoRA) learning rate
    retriever_lr: float = 2e-5
    warmup: float = 0.05
    # 160 reader tokens hold the whole of 97% of gold passages; 64 hide the answer from 41% of SQuAD's
    # (bench/results/passage_truncation.json): a teacher cannot prefer a passage whose answer it cannot see.
    max_passage_tokens: int = 160
    dev_size: int = 200
    # A share of the training files' articles (the gold documents' titles, seed 0) whose questions never train and are the
    # dev set without --dev: settings chosen on questions about articles training saw would look better than they are.
    held_out_share: float = 0.0
    dev_eval: int = 100  # dev questions answered before and after training and at each --eval-every (0: none)
    eval_every: int = 0
    save_every: int = 100
    gradient_checkpointing: bool = False
    seed: int = 0
    bf16: bool = False
    threads: int = 0
    device: str = "auto"
    command: list[str] = field(default_factory=lambda: typed_command("trainer.joint_training"))

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, before anything slow starts."""
        check_counts(self, at_least_one=("top_k", "steps", "batch_size", "grad_accum", "lora_rank", "max_passage_tokens"),
                     at_least_zero=("candidates", "reader_first", "dev_size", "dev_eval", "eval_every", "save_every", "threads"),
                     positive=("tau", "temperature", "lr", "retriever_lr"))
        if self.candidates_from not in CANDIDATE_SOURCES:
            raise ValueError(f"--candidates-from {self.candidates_from!r}: choose {' or '.join(CANDIDATE_SOURCES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.loss == "adist" and not is_fid_reader(self.reader):
            raise ValueError(f"--loss adist distils the reader's cross-attention over its passages, which only a Fusion-in-Decoder "
                             f"reader has: give --reader the folder of an encoder-decoder model (T5, BART); {self.reader} is "
                             "decoder-only. Or choose emdr2, pdist, loop or rag")
        refresh = Refresh.parse(self.refresh)
        if self.query_side_only and refresh.kind != "none":
            raise ValueError("--query-side-only keeps the passage side frozen (the index's vectors): there is nothing to "
                             "refresh; drop --refresh or --query-side-only")
        if self.top_k > MAX_K:  # the reader reads them all in one prompt, and rag-eval qa (dev) asks for at most this
            raise ValueError(f"--top-k {self.top_k}: at most {MAX_K} passages per question")
        if self.candidates and self.candidates < self.top_k:
            raise ValueError(f"--candidates {self.candidates} must be at least --top-k {self.top_k}: the reader reads the first "
                             "--top-k of the candidates")
        if self.adapter is not None:
            kind = adapter_kind(self.adapter)
            if kind != "LORA":
                raise ValueError(f"--adapter {self.adapter} is a {kind} adapter: joint training trains a LoRA one on "
                                 "(rag-train reader --method lora, or a joint run's export/reader)")
            if self.method != "lora":
                raise ValueError(f"--adapter {self.adapter} is a LoRA adapter to train on: drop --method {self.method} or --adapter")
        if self.reader_first >= self.steps:
            raise ValueError(f"--reader-first {self.reader_first} leaves none of the {self.steps} --steps to the retriever: "
                             "make it smaller than --steps")
        if self.candidates > self.top_k and self.loss == "loop":
            raise ValueError("--loss loop scores each passage by the answer without it, in a prompt that holds all the others: "
                             "it ranks the --top-k the reader reads; drop --candidates or choose emdr2, pdist or rag")
        if self.candidates > self.top_k and self.loss == "adist":
            raise ValueError("--loss adist takes its target from the cross-attention of the pass that reads the --top-k passages: "
                             "it ranks those; drop --candidates or choose emdr2, pdist or rag")
        if self.retrieved == 1:  # a softmax over one passage is 1 whatever the scores: every loss is 0 for the retriever
            raise ValueError("--top-k 1 without --candidates gives the retriever one passage per question to rank, so it "
                             "learns nothing: use --candidates 2 or more (or rag-train reader to train the reader alone)")
        if refresh.kind == "rerank" and refresh.n < self.retrieved:
            raise ValueError(f"--refresh rerank:{refresh.n} must over-retrieve at least --top-k and --candidates ({self.retrieved}) passages")
        check_warmup(self.warmup)
        if not 0 <= self.held_out_share < 1:
            raise ValueError(f"--held-out-share is a share of the training files' articles, from 0 to below 1; got {self.held_out_share}")
        check_training_files(self.train)
        if self.dev is not None:
            if not Path(self.dev).is_file():
                raise ValueError(f"--dev file not found: {self.dev}")
            check_not_evaluation_only(self.dev)  # dev figures choose settings: never on a test set

    @property
    def retrieved(self) -> int:
        """Passages retrieved per question: the candidates of the retriever's loss, of which the reader reads the first top_k."""
        return max(self.top_k, self.candidates)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON with every path absolute (the reader's too when it names a folder): `--resume` reads
        them back from any working directory."""
        absolute = replace(self, index=Path(self.index).resolve(), train=[Path(p).resolve() for p in self.train], out=Path(self.out).resolve(),
                           dev=Path(self.dev).resolve() if self.dev else None, adapter=Path(self.adapter).resolve() if self.adapter else None,
                           reader=str(Path(self.reader).resolve()) if Path(self.reader).exists() else self.reader)
        return json.loads(json.dumps(asdict(absolute), default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JointTrainingConfig:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values.update(index=Path(data["index"]), out=Path(data["out"]), train=[Path(p) for p in data["train"]],
                      dev=Path(data["dev"]) if data.get("dev") else None, adapter=Path(data["adapter"]) if data.get("adapter") else None)
        return cls(**values)


def linear_lr_factor(step: int, start: int, warmup: int, end: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: 0 before `start`, then a linear rise over `warmup` steps
    and a linear fall to 0 at `end` (transformers' linear schedule, shifted to begin at `start`)."""
    step -= start
    if step < 0:
        return 0.0
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (end - start - step) / max(1, end - start - warmup))


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them. Not re-entrant, so it works with
    frozen inputs (LoRA) without making the embeddings require grad."""
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5 on
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# -- one step ----------------------------------------------------------------------------------------

class JointTrainer:
    """The models, optimizer and searched vectors of a run, and its step (`losses`)."""

    def __init__(self, config: JointTrainingConfig, index: Index, generation: int = 0) -> None:
        self.config = config
        self.refresh = Refresh.parse(config.refresh)
        self.rank, self.world_size = world()
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # torchrun: one GPU per process
        self.search_index = TrainingIndex(index, config.out / "index", generation, self.device)
        self.refresh_seconds = 0.0  # re-embedding the index (every:N) or the candidates (rerank:L), all steps so far
        self.refresh_passages = 0  # the passages those re-embedded
        check_candidate_source(index, config.candidates_from)
        if config.retrieved > self.search_index.size:
            raise ValueError(f"--top-k / --candidates {config.retrieved}: the index has only {self.search_index.size} passages")
        # One encoder for both sides, starting where the index's vectors came from (query-side only never runs its passage side).
        self.retriever = DualEncoder(index.manifest.encoder, shared=True).to(self.device)
        if self.retriever.dim != index.manifest.dim:
            raise ValueError(f"encoder {index.manifest.encoder!r} is {self.retriever.dim}-d, the index {index.manifest.dim}-d")
        # float32 weights on every device: --bf16 autocasts the compute, the optimizer keeps full precision.
        self.reader = load_generative_reader(config.reader, device=str(self.device), dtype=torch.float32,
                                             max_passage_tokens=config.max_passage_tokens)
        if config.gradient_checkpointing:
            checkpoint_activations(self.reader.model)
            checkpoint_activations(self.retriever.query_model)
        self.reader_params = trainable_parameters(self.reader, config.method, config.lora_rank, config.adapter)
        # Tokens each reader forward read (padding excluded), kept on the device and summed once a step by
        # `take_reader_tokens`: reading them per forward would make the GPU wait in the middle of the step.
        self._reader_tokens: list[torch.Tensor] = []
        self.reader.model.register_forward_pre_hook(self._count_tokens, with_kwargs=True)
        self.retriever_params = list(self.retriever.parameters())
        self.reader.model.train()
        self.retriever.train()
        self.optimizer = torch.optim.AdamW([{"params": self.reader_params, "lr": config.lr},
                                            {"params": self.retriever_params, "lr": config.retriever_lr}], weight_decay=0.0)
        # Each group warms up from the step its loss starts at (the retriever's after --reader-first) and decays to 0 at the end.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            partial(linear_lr_factor, start=start, warmup=math.ceil(config.warmup * (config.steps - start)), end=config.steps)
            for start in (0, config.reader_first)])

    def encoder_has_moved(self) -> bool:
        """Whether an optimizer step so far has changed the encoder. Its learning rate is 0 through --reader-first
        and on the first step of its warm-up, and until it moves the stored vectors are its own: nothing to refresh."""
        factor = self.schedule.lr_lambdas[1]
        return any(factor(step) > 0 for step in range(self.config.reader_first, self.schedule.last_epoch))

    def _count_tokens(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self._reader_tokens.append(mask.sum())

    def take_reader_tokens(self) -> int:
        """The tokens the reader has read since the last call (training and scoring passes together)."""
        total = int(torch.stack(self._reader_tokens).sum()) if self._reader_tokens else 0
        self._reader_tokens.clear()
        return total

    def retrieve(self, questions: Sequence[str], query: torch.Tensor, passage_side: bool) -> tuple[list[list[SearchHit]], torch.Tensor]:
        """The top passages of each question (`config.retrieved` of them: its query vector's, or fused with BM25's)
        and their scores s_k (B, K), differentiable in the query (and in the passage side when `passage_side`, else
        against the searched vectors). A rerank:L refresh waits until the encoder has moved: before, the stored
        vectors are its own."""
        k = self.config.retrieved
        diverged = (~torch.isfinite(query).all()).float().reshape(1)
        if self.world_size > 1:  # the search gathers every rank's queries: all ranks stop here, or none
            dist.all_reduce(diverged, op=dist.ReduceOp.MAX)
        if diverged.item():  # NaN weights find nothing: say why, not that the search came up short
            raise TrainingDiverged(f"training diverged at step {self.schedule.last_epoch + 1}: the query vectors are not finite "
                                   "numbers; try a lower --retriever-lr")
        rerank = self.refresh.kind == "rerank" and self.encoder_has_moved()
        found = self.search_index.search(query.detach().float().cpu().numpy(), self.refresh.n if rerank else k)
        if any(len(row) < k for row in found):
            raise RuntimeError(f"the search returned fewer than the {k} passages asked for")
        if rerank:
            found = [self._rerank(q, row) for q, row in zip(query.detach(), found)]
        if self.config.candidates_from == "hybrid":
            found = self.search_index.with_bm25(questions, found, k)
        scores = passage_scores(query, found, self.search_index, self.retriever if passage_side else None,
                                in_batch=self.config.in_batch_negatives)
        return found, hide_own_elsewhere(scores, found) if self.config.in_batch_negatives else scores

    def _rerank(self, query: torch.Tensor, candidates: list[SearchHit]) -> list[SearchHit]:
        """The best of over-retrieved candidates by the current passage side (its time counts as refreshing)."""
        start = time.perf_counter()
        best = rerank(self.retriever, query, candidates, self.config.retrieved)
        self.refresh_seconds += time.perf_counter() - start
        self.refresh_passages += len(candidates)
        return best

    def reader_logprobs(self, questions: Sequence[str], found: Sequence[Sequence[SearchHit]], answers: Sequence[str],
                        leave_one_out: bool) -> torch.Tensor:
        """(B, K): log p(a|q,d_k), or with `leave_one_out` log p(a|q, D minus d_k), all rows in one batch."""
        asked, read, wanted = [], [], []
        for question, row, answer in zip(questions, found, answers):
            for k in range(len(row)):
                asked.append(question)
                read.append(list(row[:k]) + list(row[k + 1 :]) if leave_one_out else [row[k]])
                wanted.append(answer)
        return self.reader.read_logprobs(asked, read, wanted)[0].view(len(questions), -1)

    def losses(self, records: Sequence[QARecord], teach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(reader answer NLL on the top-K in one prompt, retriever loss over the candidates) of one micro-batch;
        without `teach` (the --reader-first steps) the retriever's loss is 0 and the reader scores no candidates."""
        config = self.config
        questions, answers = [r.question for r in records], [r.answers[0] for r in records]
        with nullcontext() if teach else torch.no_grad():
            query = self.retriever(questions, "query")
            # Untaught steps need only the passages: the passage side's scores would be thrown away.
            found, scores = self.retrieve(questions, query, passage_side=teach and not config.query_side_only)
        read = [list(row[: config.top_k]) for row in found]
        if teach and config.loss == "adist":
            # The teacher is the reading pass itself: its cross-attention over the top-K it reads. check() refuses adist
            # with any other reader, and with candidates beyond the top-K.
            assert isinstance(self.reader, FiDReader)
            logprobs, lengths, mass = self.reader.read_with_attention(questions, read, answers)
            return -logprobs.sum() / lengths.sum(), adist_loss(scores, self._spread(mass, 0.0), config.tau)
        reader_nll = answer_nll(self.reader, [ReaderExample(q, row, a, None) for q, row, a in zip(questions, read, answers)])
        if not teach:
            return reader_nll, scores.new_zeros(())
        if config.loss == "rag":
            # The marginal trains the reader too: its per-passage likelihoods keep their gradients.
            return reader_nll, rag_marginal_loss(scores, self._spread(self.reader_logprobs(questions, found, answers, False), -math.inf),
                                                 config.tau)
        with evaluating(self.reader.model):
            targets = self.reader_logprobs(questions, found, answers, leave_one_out=config.loss == "loop")
        # loop's target falls with its log-likelihood (the answer without the passage): +inf gives no mass
        targets = self._spread(targets, math.inf if config.loss == "loop" else -math.inf)
        if config.loss == "emdr2":
            return reader_nll, emdr2_loss(scores, targets, config.tau)
        if config.loss == "pdist":
            return reader_nll, pdist_loss(scores, targets, config.tau, config.temperature)
        return reader_nll, loop_loss(scores, targets, config.tau, config.temperature)

    def _spread(self, targets: torch.Tensor, fill: float) -> torch.Tensor:
        """(B, K) targets over the own candidates, widened to the in-batch columns of the scores when those are on."""
        return in_batch_targets(targets, fill) if self.config.in_batch_negatives else targets

    def step(self, micro_batches: Sequence[Sequence[QARecord]]) -> dict[str, float]:
        """One optimizer step over `micro_batches` (gradient accumulation); the mean losses."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)
        totals = {"reader_nll": 0.0, "retriever_loss": 0.0}
        teach = self.schedule.last_epoch >= self.config.reader_first  # last_epoch: the optimizer steps taken so far
        for batch in micro_batches:
            with autocast:
                reader_nll, retriever_loss = self.losses(batch, teach)
            ((reader_nll + retriever_loss) / len(micro_batches)).backward()
            totals["reader_nll"] += reader_nll.item() / len(micro_batches)
            totals["retriever_loss"] += retriever_loss.item() / len(micro_batches)
        if self.world_size > 1:
            totals = self._average(totals, teach)
        # Every rank has the same mean gradients and losses here, so all of them stop together.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.reader_params + self.retriever_params, 1.0))
        check_finite(self.schedule.last_epoch + 1, totals["reader_nll"] + totals["retriever_loss"], grad_norm,
                     "try a lower --lr or --retriever-lr")
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return totals

    def _average(self, totals: dict[str, float], teach: bool) -> dict[str, float]:
        """Data parallelism: every rank's gradients replaced by their mean over the ranks (the DDP all-reduce,
        done by hand because the shared encoder runs several forward passes per step, which DDP's hooks refuse),
        and the mean losses for the log. Before the retriever is taught its gradients stay None, as on one
        process: zeros would start AdamW's moments and step count early and skew its first real updates."""
        for param in self.reader_params + (self.retriever_params if teach else []):
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
            param.grad /= self.world_size
        losses = torch.tensor(list(totals.values()), dtype=torch.float64, device=self.search_index.comm_device or "cpu")
        dist.all_reduce(losses)
        return dict(zip(totals, (losses / self.world_size).tolist()))

    def evaluate(self, records: Sequence[QARecord]) -> dict[str, Any]:
        """`rag-eval qa` metrics of the system as it stands: trained query encoder, searched vectors, reader."""
        with evaluating(self.reader.model, self.retriever):
            summary, _ = evaluate_qa(Pipeline(self.search_index, self.reader, retriever=self.retriever),  # type: ignore[arg-type]
                                     records, k=self.config.top_k, mode="dense", batch_size=8, progress=False)
        return summary

    # -- checkpoints and export -------------------------------------------------------------------

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights that train (the reader's LoRA or all of it, the encoder), by name."""
        reader = {n: p.detach().cpu().clone() for n, p in self.reader.model.named_parameters() if p.requires_grad}
        return {"reader": reader, "retriever": {n: t.detach().cpu().clone() for n, t in self.retriever.state_dict().items()}}

    def save_checkpoint(self, step: int, cursor: int) -> None:
        """Write RUN_DIR/checkpoint.pt atomically (rank 0): a crash leaves the previous checkpoint whole.
        Weights are equal on every rank; random states are each rank's own."""
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        rngs = [rng]
        if self.world_size > 1:
            rngs = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        if self.rank == 0:
            state = {"step": step, "cursor": cursor, "generation": self.search_index.generation, "world_size": self.world_size,
                     "index_generation": self.search_index.index.generation,
                     **self.trainable_state(), "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                     "rng": rngs}
            tmp = self.config.out / (CHECKPOINT + ".tmp")
            torch.save(state, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.config.out / CHECKPOINT)
        barrier()  # no rank drops a generation before the checkpoint that replaces it is written
        self.search_index.drop_older(self.search_index.generation)

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Restore weights, optimizer, schedule and random state from a checkpoint (the generation is loaded at __init__)."""
        # Checked before loading anything: a checkpoint of another reader must leave this one as it was.
        unknown = set(state["reader"]) - {n for n, _ in self.reader.model.named_parameters()}
        if unknown:
            raise RuntimeError(f"checkpoint does not fit this reader: it has {sorted(unknown)[:3]} ...")
        self.reader.model.load_state_dict(state["reader"], strict=False)
        self.retriever.load_state_dict(state["retriever"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        cpu_rng, cuda_rng = state["rng"][self.rank]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)

    def export(self, folder: Path) -> dict[str, str]:
        """folder/encoder (the trained query encoder, a sentence-transformers folder) and folder/reader."""
        encoder_dir, reader_dir = folder / "encoder", folder / "reader"
        shutil.rmtree(folder, ignore_errors=True)
        self.retriever.save_query_encoder(encoder_dir)
        self.reader.model.save_pretrained(reader_dir)
        if self.config.method == "full":
            self.reader.tokenizer.save_pretrained(reader_dir)
        return {"encoder": str(encoder_dir), "reader": str(reader_dir)}


# -- the run -----------------------------------------------------------------------------------------

def article_titles(index: Index, records: Sequence[QARecord]) -> dict[str, str]:
    """Gold document id -> its article (title), for the records' gold documents live in the index."""
    live = index.store.live_documents(sorted({g for r in records for g in r.gold_ids}))
    return {doc_id: title for doc_id, (_, title, _, _) in live.items()}


def split_held_out(index: Index, records: list[QARecord], share: float) -> tuple[list[QARecord], list[QARecord]]:
    """(rest, held out): `split_by_article` with each gold document's article read off the index (its title). The split's
    seed is fixed, not --seed: runs with other seeds are measured on the same articles."""
    return split_by_article(records, article_titles(index, records), share, seed=0)


def training_order(index: Index, files: Sequence[Path], share: float, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """Every record of `files`, shuffled by `seed`, less those about a `share` of the articles (held out, second), in
    that order: what a joint run with --held-out-share, or with --dev, trains on, and bench/retriever_ceiling.py too."""
    records = mixed_records(list(files), 0, seed)[0]
    train, held_out = split_held_out(index, records, share) if share else (records, [])
    return trainable(train), held_out


def run_records(config: JointTrainingConfig, ranks: int, index: Index) -> tuple[list[QARecord], list[QARecord]]:
    """Training records (shuffled, seeded) and dev records (the --dev file's, or held out of the training files: whole
    articles with --held-out-share, else --dev-size questions)."""
    needed = config.steps * config.batch_size * config.grad_accum * ranks
    if config.held_out_share:
        train, held_out = training_order(index, config.train, config.held_out_share, config.seed)
        if not held_out:
            raise ValueError(f"--held-out-share {config.held_out_share} holds out no question: it needs records with gold_ids whose "
                             "documents are in --index, and enough articles (titles) for the share to round to at least one")
        if not train:
            raise ValueError(f"--held-out-share {config.held_out_share} holds out every training question: lower it")
        train = train[:needed]
    else:
        train, held_out = load_train_dev(config.train, needed, 0 if config.dev else config.dev_size, config.seed)
    dev = read_qa(config.dev) if config.dev else held_out
    return train, sample(dev, config.dev_eval, config.seed) if config.dev_eval else []


def peak_memory_mib(device: torch.device) -> float:
    """The most memory this process has held so far: the GPU's allocations on CUDA, else its resident set."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def speed(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Median step time and reader tokens/s of the logged steps (the first left out: it warms up), the peak
    memory, and the re-embedding throughput of the refreshes (the whole index every N steps, or the over-retrieved
    candidates of each step), None when nothing was re-embedded."""
    if not rows:
        return None
    steady, last = rows[1:] or rows, rows[-1]
    refreshed = last.get("refresh_passages_total", 0) and last["refresh_seconds_total"]
    return {"median_step_seconds": float(np.median([r["step_seconds"] for r in steady])),
            "median_reader_tokens_per_second": float(np.median([r["reader_tokens_per_second"] for r in steady])),
            "peak_memory_mib": max(r["peak_memory_mib"] for r in rows),
            "refresh_passages_per_second": round(last["refresh_passages_total"] / last["refresh_seconds_total"], 1) if refreshed else None}


def _log(fh: Any, row: dict[str, Any]) -> None:
    fh.write(json.dumps(row) + "\n")
    fh.flush()


def _metrics_until(path: Path, step: int) -> list[dict[str, Any]]:
    """The metrics rows of steps up to `step`: what a resumed run keeps."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed as it wrote; the checkpoint says where it was
            continue
        if row.get("step", 0) <= step:
            rows.append(row)
    return rows


def train_joint(config: JointTrainingConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or, with `resume`, continue the run saved in `config.out`), export and return the run's record.

    Under torchrun (WORLD_SIZE > 1) every process runs this: data parallel, the dense index sharded across
    the ranks, rank 0 writing the run folder. `stop_after` ends the run after that many steps,
    checkpointed, as a pre-empted job would stop; `--resume` then carries on to exactly where an
    uninterrupted run would be.
    """
    config.check()
    started_group = start_distributed(pick_device(config.device))
    try:
        return _train(config, resume, progress and world()[0] == 0, stop_after)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(config: JointTrainingConfig, resume: bool, progress: bool, stop_after: int | None) -> dict[str, Any]:
    rank, ranks = world()
    out = config.out
    if not resume:
        check_new_folder(out, f"choose a new folder, or --resume {out}")
    barrier()  # every rank has looked before rank 0 writes
    if config.threads:
        torch.set_num_threads(config.threads)
    # On the CPU: under torchrun every rank would otherwise put rank 0's saved tensors on rank 0's GPU.
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False) if resume else None
    if state and state["world_size"] != ranks:  # before the generation files, which are per rank of that many
        raise ValueError(f"the checkpoint was written by {state['world_size']} processes: resume with as many, not {ranks}")
    torch.manual_seed(config.seed)
    with Index.open(config.index, readonly=True) as index, ExitStack() as on_exit:
        if state and state.get("index_generation", index.generation) != index.generation:
            # Its passages and the run's re-embedded vectors would no longer agree: not the run it was.
            raise ValueError(f"{config.index} changed since the run stopped (generation {state['index_generation']} then, "
                             f"{index.generation} now): a resume needs the index as it was; start a new run instead")
        train, dev = run_records(config, ranks, index)
        trainer = JointTrainer(config, index, generation=state["generation"] if state else 0)
        if rank == 0:
            # Only now: a start that failed above leaves --out as it was, so the same command can run again; so does a
            # run stopped before its first checkpoint.
            def kept(exc: BaseException) -> str:
                if isinstance(exc, TrainingDiverged):  # a resume is exact: it would diverge again at the same step
                    return (f"the last checkpoint is kept in {out / CHECKPOINT}, but `--resume` repeats the learning rates "
                            "that diverged: start a new run with lower ones")
                return f"the last checkpoint is kept in {out / CHECKPOINT}: `rag-train joint --resume {out}` carries on from it"

            on_exit.enter_context(resumed_run_folder(out, kept) if resume else new_run_folder(out, keep=CHECKPOINT, kept=kept))
            (out / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
        step, cursor = 0, 0
        if state:
            trainer.load_checkpoint(state)
            step, cursor = state["step"], state["cursor"]
        del state  # the models and optimizer hold their own copies now
        step, final = _run_steps(config, trainer, train, dev, step, cursor, stop_after, progress)
        if final is None:
            return {"stopped_at": step}
        if rank != 0:
            barrier()  # rank 0 exports
            return {"steps": step, "rank": rank}
        record = {"steps": step, "processes": ranks, "train_questions": len(train), "dev_questions": len(dev)}
        return _write_record(config, trainer, index.manifest.encoder, record, final)


def _run_steps(config: JointTrainingConfig, trainer: JointTrainer, train: list[QARecord], dev: list[QARecord], step: int,
               cursor: int, stop_after: int | None, progress: bool) -> tuple[int, dict[str, Any] | None]:
    """Train from `step` (the question `cursor` of `train` next) to the end or to `stop_after`, logging metrics and
    checkpoints; the last step and the final dev evaluation ({} without `dev`), or None for a run stopped early."""
    rank, ranks = world()
    out = config.out
    kept = _metrics_until(out / METRICS, step) if rank == 0 else []
    started = time.time()
    last_row = next((row for row in reversed(kept) if "reader_nll" in row), {})
    trainer.refresh_seconds, trainer.refresh_passages = last_row.get("refresh_seconds_total", 0.0), last_row.get("refresh_passages_total", 0)
    with open(out / METRICS if rank == 0 else os.devnull, "w") as log:
        for row in kept:
            _log(log, row)
        if dev and step == 0:
            _log(log, {"step": 0, "dev": trainer.evaluate(dev)})
        last_step = min(config.steps, stop_after) if stop_after is not None else config.steps
        with tqdm(range(step, last_step), desc=f"joint {config.loss}", unit="step", disable=not progress) as bar:  # closed before an error prints
            for step in range(step + 1, last_step + 1):
                micro = []
                for _ in range(config.grad_accum):
                    # Each rank its own slice of the global batch.
                    begin = cursor + rank * config.batch_size
                    micro.append([train[(begin + i) % len(train)] for i in range(config.batch_size)])
                    cursor += config.batch_size * ranks
                trainer.take_reader_tokens()  # drop what a dev evaluation read
                lr = trainer.schedule.get_last_lr()[0]  # the reader's rate this step uses (after it, the next step's)
                step_started = time.perf_counter()
                losses = trainer.step(micro)
                step_seconds = time.perf_counter() - step_started
                row: dict[str, Any] = {"step": step, **losses, "lr": lr,
                                       "generation": trainer.search_index.generation, "seconds": round(time.time() - started, 3),
                                       "step_seconds": round(step_seconds, 3),
                                       "reader_tokens_per_second": round(trainer.take_reader_tokens() / step_seconds, 1),
                                       "peak_memory_mib": peak_memory_mib(trainer.device)}
                if (trainer.refresh.kind == "every" and step % trainer.refresh.n == 0 and step < config.steps
                        and trainer.encoder_has_moved()):
                    row["refresh"] = trainer.search_index.refresh(trainer.retriever, progress=progress)
                    trainer.refresh_seconds += row["refresh"]["seconds"]
                    trainer.refresh_passages += row["refresh"]["passages"]
                row["refresh_seconds_total"] = round(trainer.refresh_seconds, 3)
                row["refresh_passages_total"] = trainer.refresh_passages
                _log(log, row)
                if dev and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    _log(log, {"step": step, "dev": trainer.evaluate(dev)})
                if (config.save_every and step % config.save_every == 0) or step == last_step:
                    trainer.save_checkpoint(step, cursor)
                bar.update(1)
                bar.set_postfix(nll=f"{losses['reader_nll']:.3f}", ret=f"{losses['retriever_loss']:.3f}")
        if step < config.steps:
            return step, None
        # A finished run resumed keeps its final evaluation rather than logging a second one. Only rank 0 read the
        # metrics, and every rank must choose alike: the evaluation searches the shards together.
        final = next((row["dev"] for row in kept if row.get("final")), None)
        if ranks > 1:
            shared = [final]
            dist.broadcast_object_list(shared, src=0)
            final = shared[0]
        if final is None:
            final = trainer.evaluate(dev) if dev else {}
            if dev:
                _log(log, {"step": step, "dev": final, "final": True})
    return step, final


def _write_record(config: JointTrainingConfig, trainer: JointTrainer, base_encoder: str, record: dict[str, Any],
                  final: dict[str, Any]) -> dict[str, Any]:
    """Export the models, write training.json (`record` and what the metrics log says of the run) and return it."""
    out = config.out
    exported = trainer.export(out / "export")
    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    record = {
        "command": config.command,
        "config": config.to_json(),
        **record,
        "dev_before": next((r["dev"] for r in rows if "dev" in r and r["step"] == 0), None),
        "dev_after": final or None,
        "final_losses": next(({k: r[k] for k in ("reader_nll", "retriever_loss")} for r in reversed(rows) if "reader_nll" in r), None),
        "refresh_seconds": round(trainer.refresh_seconds, 3),
        "speed": speed([r for r in rows if "step_seconds" in r]),
        "generation": trainer.search_index.generation,
        "export": exported | {"base_encoder": base_encoder, "base_reader": config.reader},
        "machine": machine() | {"device": str(trainer.device)},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    barrier()
    return record


# -- command line ------------------------------------------------------------------------------------

def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.joint_training` (and of `rag-train joint`, which takes them as a parent)."""
    d = JointTrainingConfig(index=Path(), train=[], out=Path())
    parser = argparse.ArgumentParser(prog="python -m trainer.joint_training", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     add_help=add_help, description="Joint retriever-reader training (EMDR^2, PDist, LOOP, ADist, RAG).")
    add = parser.add_argument
    add("--index", type=Path, help="index to train with (only read); its encoder is where the retriever starts")
    add("--train", help="QA training files, comma-separated (never an evaluation-only file)")
    add("--dev", type=Path, default=None, help="QA file for dev evaluation; without it, --dev-size questions of --train are held out")
    add("--loss", choices=LOSSES, default=d.loss, help="the retriever's loss (adist needs a FiD reader)")
    add("--top-k", type=int, default=d.top_k, help="passages per question the reader reads")
    add("--candidates", type=int, default=d.candidates,
        help="passages per question the retriever's loss ranks, each scored alone by the reader (0: --top-k); more than "
             "--top-k lets the loss lift passages from below the top-K into it")
    add("--candidates-from", choices=CANDIDATE_SOURCES, default=d.candidates_from,
        help="where the candidates come from: the dense index alone, or hybrid, fused with BM25's best as the server's "
             "default search is (BM25 brings passages the dense side ranks too low to see, the ones it must learn to lift)")
    add("--reader-first", type=int, default=d.reader_first,
        help="steps the reader trains alone before the retriever's loss starts, so that the retriever learns from a reader "
             "that has learned to read passages; the retriever's learning rate warms up from then")
    add("--refresh", default=d.refresh, help="none, every:N (re-embed all passages every N steps) or rerank:L (over-retrieve L)")
    add("--query-side-only", action="store_true", help="train the query side only, against the index's frozen vectors")
    add("--in-batch-negatives", action="store_true",
        help="rank each question's candidates among every candidate of its micro-batch: the other questions' passages are "
             "negatives (DPR's in-batch negatives) that keep the retriever telling articles apart, at no extra encoding")
    add("--tau", type=finite_float, default=d.tau, help="retriever softmax temperature")
    add("--temperature", type=finite_float, default=d.temperature, help="T of the pdist and loop targets")
    add("--reader", default=d.reader, help="causal LM name or folder; or the folder of an encoder-decoder model (T5, BART), "
                                          "read Fusion-in-Decoder style, which --loss adist needs")
    add("--adapter", type=Path, default=None,
        help="a LoRA adapter of --reader to start from, e.g. a rag-train reader run, so that the retriever learns from a reader "
             "that already reads passages; its LoRA trains on (its rank, not --lora-rank)")
    add("--method", choices=("lora", "full"), default=d.method, help="how the reader trains")
    add("--lora-rank", type=int, default=d.lora_rank, help="LoRA rank")
    add("--max-passage-tokens", type=int, default=d.max_passage_tokens,
        help="each passage cut to this many reader tokens (default %(default)s: whole for 97%% of gold passages)")
    add_optimizer_options(parser, d, "questions in each of the --grad-accum micro-batches")
    add("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    add("--retriever-lr", type=finite_float, default=d.retriever_lr, help="the encoder's peak learning rate (--lr is the reader's)")
    add("--dev-size", type=int, default=d.dev_size, help="questions held out of --train when there is no --dev (nor --held-out-share)")
    add("--held-out-share", type=finite_float, default=d.held_out_share,
        help="share of --train's articles (its gold documents' titles in --index), seeded, whose questions never train and, "
             "without --dev, are the dev set: dev figures then come from articles training never saw (0: none)")
    add("--dev-eval", type=int, default=d.dev_eval, help="dev questions answered before, during and after training (0: none)")
    add("--eval-every", type=int, default=d.eval_every, help="steps between dev evaluations (0: before and after only)")
    add("--save-every", type=int, default=d.save_every, help="steps between checkpoints (0: at the end only)")
    add("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass (less memory)")
    add_run_options(parser, d, "seed of the data order and the LoRA initialisation")
    add("--out", type=Path, default=None, help="run folder (new or empty)")
    add("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved settings")
    parser.set_defaults(run=_run)
    return parser


def _train_files(text: str) -> list[Path]:
    """The files of a comma-separated --train."""
    return [Path(p) for p in text.split(",") if p]


def _resumed_config(args: argparse.Namespace) -> JointTrainingConfig:
    """The saved settings of the run in folder `args.resume`, continuing in that folder wherever it is now (a copied
    or moved run folder goes on there, not where it started). ValueError naming each option given beside --resume
    that differs from the run's setting: the run continues as it was started, so a new setting would be ignored."""
    folder = args.resume
    for name in (CHECKPOINT, "config.json"):
        if not (folder / name).is_file():
            raise ValueError(f"--resume {folder}: no {name} there; give the folder of a run that `rag-train joint --out` checkpointed")
    try:
        saved = replace(JointTrainingConfig.from_json(json.loads((folder / "config.json").read_text())), out=folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--resume {folder}: unreadable config.json ({exc})") from exc
    # What the command line says, as far as argparse can tell: the options whose value is not the parser's default.
    defaults = build_parser()
    given = {f.name: getattr(args, f.name) for f in fields(JointTrainingConfig)
             if hasattr(args, f.name) and getattr(args, f.name) != defaults.get_default(f.name)}
    if "train" in given:
        given["train"] = _train_files(args.train)
    asked, kept = replace(saved, **given).to_json(), saved.to_json()
    differing = [f"--{name.replace('_', '-')} {asked[name]} (the run's: {kept[name]})" for name in given if asked[name] != kept[name]]
    if differing:
        raise ValueError(f"--resume {folder} continues the run with its saved settings, and these options differ from them: "
                         f"{'; '.join(differing)}. Drop them, or start a new run with --out")
    return saved


def _run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        record = train_joint(_resumed_config(args), resume=True)
    else:
        for option in ("index", "train", "out"):
            if getattr(args, option) is None:
                raise ValueError(f"--{option} is required (unless --resume RUN_DIR)")
        config = config_from_args(JointTrainingConfig, args, train=_train_files(args.train))
        record = train_joint(config)
    # Under torchrun (WORLD_SIZE > 1, as start_distributed reads it) one result for the run: rank 0's, which exported it.
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: record.get(k) for k in ("steps", "dev_before", "dev_after", "refresh_seconds", "export")}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.joint_training`."""
    return run_command("python -m trainer.joint_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
