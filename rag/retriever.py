"""Dual-encoder retriever: a query encoder and a passage encoder (shared or separate weights).

Plain torch modules, so a trainer can update them; pooling and normalisation follow the model's
sentence-transformers folder (mean pooling, normalised, for the default MiniLM), so its vectors
match the ones the indexer stored.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from indexer.encoder import DEFAULT_ENCODER, _sentence_transformers_layout, load_encoder_model, resolve_model_path

# Files of a sentence-transformers folder that say how its encoder pools, normalises and truncates.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class DualEncoder(torch.nn.Module):
    """E_q and E_p of a dual encoder; `forward(texts, side)` returns differentiable embeddings."""

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, shared: bool = True, max_length: int | None = None) -> None:
        super().__init__()
        self.tokenizer, self.query_model, path = load_encoder_model(name_or_path, "retriever encoder")
        local = os.path.isdir(path)
        # Separate weights start as a copy: both sides begin where the index's encoder is.
        self.passage_model = self.query_model if shared else copy.deepcopy(self.query_model)
        self.name = name_or_path
        self.shared = shared
        self.pooling, self.normalize, st_max = _sentence_transformers_layout(Path(path)) if local else ("mean", True, None)
        self.max_length = max_length or st_max or min(self.tokenizer.model_max_length, 512)
        self.dim = int(self.query_model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.query_model.parameters()).device

    def save_query_encoder(self, folder: str | Path) -> None:
        """Save the query side as a model folder that `DualEncoder`, `rag-index build --encoder` and the server
        load: weights, tokenizer, and the sentence-transformers files of the encoder it started from, so the
        saved one pools, normalises and truncates exactly as the trained one did."""
        folder = Path(folder)
        self.query_model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        source = Path(resolve_model_path(self.name))
        if not source.is_dir():
            return
        for name in ST_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
        if (source / "modules.json").is_file():
            for module in json.loads((source / "modules.json").read_text()):
                if module.get("path") and (source / module["path"]).is_dir():
                    shutil.copytree(source / module["path"], folder / module["path"], dirs_exist_ok=True)

    def forward(self, texts: Sequence[str], side: str = "query") -> torch.Tensor:
        """(len(texts), dim) embeddings from the query or the passage side, with gradients when enabled."""
        if side not in ("query", "passage"):
            raise ValueError(f"side must be 'query' or 'passage', got {side!r}")
        model = self.query_model if side == "query" else self.passage_model
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        # Pooled and normalised in float32 (bf16 autocast or weights would round each component to 8 bits).
        hidden = model(**batch).last_hidden_state.float()
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Query vectors as float32, the form `Index.search_many(query_vectors=...)` takes."""
        return self.encode(texts, "query", batch_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], side: str, batch_size: int | None = None) -> np.ndarray:
        """Vectors of the query or passage side as float32, rows in the order of `texts`, without gradients.
        `batch_size` defaults to 16 on a CPU (faster there than 64: bench/refresh_throughput.py), else 64."""
        batch_size = batch_size or (16 if self.device.type == "cpu" else 64)
        # Longest first, so each batch pads to texts of about its own length (characters stand in for tokens).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors[rows] = self([texts[i] for i in rows], side).float().cpu().numpy()
        return vectors
