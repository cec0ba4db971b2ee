"""Scope classifier for knowledge edits: is a question within the scope of an edit? (SERAC's classifier)

A cross-encoder on the MiniLM encoder reads the pair `[CLS] edit text [SEP] question [SEP]` and gives one
logit; sigmoid(logit) is the probability that the edit decides the question's answer. It is one of
the edit router's two alternative deciders (rag/editing.py); the other, the similarity baseline, compares
the cosine similarity of the question and the edit's key with `similarity_threshold`. The classifier
reads both texts together, so it can tell "the mother tongue of Danielle Darrieux" (in scope of an edit
about her mother tongue) from "the birthplace of Danielle Darrieux" or "the mother tongue of Gwen
Stefani" (out of scope), which embeddings of similar sentences cannot.

The pair is pooled by the mean of its token vectors (as the sentence encoder was pretrained to pool) and
a linear head gives the logit. Training is trainer/scope_training.py; both decision thresholds are
chosen there and saved with the model.

A saved classifier is a folder with `scope_config.json` (the marker: kind "scope-classifier", with
`threshold` and `similarity_threshold`), `head.safetensors` and `encoder/` (encoder weights in float16
on disk to halve the size, float32 once loaded, plus the tokenizer).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from indexer.encoder import DEFAULT_ENCODER, load_encoder_model
from rag.reader import pick_device

CONFIG_FILE = "scope_config.json"  # the name rag/editing.py looks for
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
KIND = "scope-classifier"
FORMAT_VERSION = 1
# The classifier trained and shipped by the project (rag/classifiers/scope-minilm/TRAINING.md says how).
SHIPPED = Path(__file__).resolve().parent / "classifiers" / "scope-minilm"


def is_scope_classifier(path: str | Path) -> bool:
    """Whether `path` is a folder written by `ScopeClassifier.save_pretrained` (its config names the kind)."""
    config = Path(path) / CONFIG_FILE
    try:
        return config.is_file() and json.loads(config.read_text()).get("kind") == KIND
    except (OSError, json.JSONDecodeError):
        return False


@dataclass
class ScopeClassifierConfig:
    """What a saved classifier needs besides its weights, and the decisions chosen for it; the json file."""

    base_model: str = DEFAULT_ENCODER
    max_length: int = 128  # tokens per (edit text, question) pair; edits and questions are a sentence each
    threshold: float = 0.5  # in scope when the probability is at least this (chosen on counterfact-val)
    # The same for an edit that states its subject, which the question names (rag.editing.about_subject): the
    # name check guards locality there, so the classifier's own balanced choice serves. None: `threshold`.
    subject_threshold: float | None = None
    # The same for such an edit asked as a question ("Which show is X in?", zsRE's form) rather than as a statement to
    # complete (CounterFact's "X is located in"): other wordings of a question score lower. None: `subject_threshold`.
    question_subject_threshold: float | None = None
    # The baseline decision: in scope when cos(question, edit key) under `similarity_encoder` is at least this
    # (None until trainer/scope_training.py calibrates it). Kept here so that both decisions ship together.
    similarity_threshold: float | None = None
    similarity_encoder: str = DEFAULT_ENCODER
    kind: str = KIND
    format_version: int = FORMAT_VERSION

    def check(self) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.kind != KIND:
            raise ValueError(f"not a scope classifier config (kind {self.kind!r}, expected {KIND!r})")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"scope classifier format {self.format_version} is newer than this code reads ({FORMAT_VERSION})")
        if not 16 <= self.max_length <= 512:
            raise ValueError(f"max_length must be from 16 to 512 tokens, got {self.max_length}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a probability, from 0 to 1; got {self.threshold}")
        for name in ("subject_threshold", "question_subject_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, from 0 to 1; got {value}")
        if self.similarity_threshold is not None and not -1.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(f"similarity_threshold is a cosine, from -1 to 1; got {self.similarity_threshold}")


def _load_encoder(name_or_path: str | Path, what: str) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
    """Tokenizer and bare encoder (no pooler: the head pools) in float32; RuntimeError naming `what` if unreadable."""
    tokenizer, encoder, _ = load_encoder_model(name_or_path, what, add_pooling_layer=False, dtype=torch.float32)
    return tokenizer, encoder


class ScopeClassifier(torch.nn.Module):
    """Cross-encoder over (edit text, question) pairs with a one-logit head; see the module docstring."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: ScopeClassifierConfig,
                 name: str, device: str | None = None) -> None:
        super().__init__()
        config.check()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        hidden = int(encoder.config.hidden_size)
        self.dropout = torch.nn.Dropout(float(getattr(encoder.config, "hidden_dropout_prob", 0.1)))
        self.head = torch.nn.Linear(hidden, 1)
        self.to(pick_device(device))
        self.eval()

    @classmethod
    def from_encoder(cls, name_or_path: str = DEFAULT_ENCODER, device: str | None = None, seed: int = 0,
                     **settings: Any) -> ScopeClassifier:
        """A new classifier over a pretrained encoder (a name or folder, offline), with a freshly initialised head (seeded)."""
        tokenizer, encoder = _load_encoder(name_or_path, "scope classifier encoder")
        torch.manual_seed(seed)
        return cls(encoder, tokenizer, ScopeClassifierConfig(base_model=name_or_path, **settings), name=name_or_path, device=device)

    @classmethod
    def from_pretrained(cls, path: str | Path = SHIPPED, device: str | None = None) -> ScopeClassifier:
        """Load a folder written by `save_pretrained` (default: the shipped classifier)."""
        path = Path(path)
        if not is_scope_classifier(path):
            raise ValueError(f"{path} is not a scope classifier folder (no {CONFIG_FILE} with kind {KIND!r})")
        raw = json.loads((path / CONFIG_FILE).read_text())
        config = ScopeClassifierConfig(**{k: v for k, v in raw.items() if k in ScopeClassifierConfig.__dataclass_fields__})
        tokenizer, encoder = _load_encoder(path / ENCODER_DIR, "scope classifier encoder")
        model = cls(encoder, tokenizer, config, name=str(path), device="cpu")
        head = load_file(str(path / HEAD_FILE))
        model.head.load_state_dict({k.removeprefix("head."): v.float() for k, v in head.items()})
        return model.to(pick_device(device))

    def save_pretrained(self, path: str | Path, encoder_dtype: torch.dtype = torch.float16) -> None:
        """Write the folder `from_pretrained` reads; encoder weights in `encoder_dtype` (float16 halves the size)."""
        path = Path(path)
        (path / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
        # Cast a copy of the weights, not the model: training may go on after a checkpoint.
        weights = {k: v.detach().to(encoder_dtype).cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        self.encoder.save_pretrained(path / ENCODER_DIR, state_dict=weights)
        self.tokenizer.save_pretrained(path / ENCODER_DIR)
        # The head is 385 numbers and makes every decision: float32.
        save_file({f"head.{k}": v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / HEAD_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def threshold(self) -> float:
        """In scope when `scores(...) >= threshold`."""
        return self.config.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold is a probability, from 0 to 1; got {value}")
        self.config.threshold = float(value)

    @property
    def similarity_threshold(self) -> float | None:
        """The calibrated cosine threshold of the similarity baseline, if training set one."""
        return self.config.similarity_threshold

    def encode(self, edit_texts: Sequence[str], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenised (edit text, question) pairs on the model's device, padded to the longest, truncated to max_length."""
        if isinstance(edit_texts, str) or isinstance(questions, str):
            raise TypeError("edit_texts and questions must be sequences of strings, not one string")
        if len(edit_texts) != len(questions):
            raise ValueError(f"{len(edit_texts)} edit texts but {len(questions)} questions")
        for text in (*edit_texts, *questions):
            if not isinstance(text, str):
                raise TypeError(f"edit texts and questions must be strings, got {type(text).__name__}")
        batch = self.tokenizer([t.strip() for t in edit_texts], [q.strip() for q in questions], truncation="longest_first",
                               max_length=self.config.max_length, padding=True, return_token_type_ids=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One float32 logit per pair, shape (batch,)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled)).float().squeeze(-1)

    @torch.inference_mode()
    def scores(self, edit_texts: Sequence[str], questions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """P(question in scope of edit) for each aligned pair: float32 array in [0, 1], in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(edit_texts, str) or isinstance(questions, str):
            raise TypeError("edit_texts and questions must be sequences of strings, not one string")
        if len(edit_texts) != len(questions):
            raise ValueError(f"{len(edit_texts)} edit texts but {len(questions)} questions")
        out = np.zeros(len(questions), dtype=np.float32)
        if not len(questions):
            return out
        # Longest pairs together: less padding. Each pair's score does not depend on its batch.
        order = np.argsort([-(len(e) + len(q)) for e, q in zip(edit_texts, questions)], kind="stable")
        was_training = self.training
        self.eval()
        try:
            for lo in range(0, len(order), batch_size):
                idx = order[lo : lo + batch_size]
                logits = self(**self.encode([edit_texts[i] for i in idx], [questions[i] for i in idx]))
                out[idx] = torch.sigmoid(logits).cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def in_scope(self, edit_texts: Sequence[str], questions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """The decision for each pair: scores at or above `threshold` (a bool array)."""
        return self.scores(edit_texts, questions, batch_size) >= self.threshold
