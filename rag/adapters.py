"""Several peft adapters over one base model, each loaded once from its folder and chosen per call.

Adapters of one kind (LoRA, (IA)³, prompt tuning: peft cannot mix kinds in one PeftModel) share one
PeftModel and are switched with `set_adapter`. Each kind wraps its own copy of the base model's module
tree whose parameters are the base's own tensors, so the weights exist once, no kind sees another's
injected layers, and the plain base stays plain. Nothing in the bank is ever merged: merging would write
into the shared weights (`load_merged`, for a reader's one fixed --adapter, does merge). Not thread-safe:
one thread at a time may choose an adapter and run the model (the server answers in a single model thread).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

# Every PeftModel() reads transformers' deprecated `is_gradient_checkpointing`: peft's to change, noise above our answers.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

QUERY_ENCODER = "query_encoder"  # subfolder of an adapter trained with its query encoder (rag-train fewshot --train-query-encoder)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # the files peft's save_pretrained writes


class AdapterError(ValueError):
    """An adapter folder a request named that cannot serve: the request's fault (a 422), not the server's."""


def check_adapter_folder(adapter: str | Path, label: str | None = None) -> Path:
    """The folder as a Path, or ValueError saying why it is not a peft adapter folder (naming it `label`, by default
    its path)."""
    folder, label = Path(adapter), label or str(adapter)
    if not folder.is_dir():
        raise AdapterError(f"adapter {label}: no such folder")
    if not (folder / "adapter_config.json").is_file():
        hint = " (a whole model: load it as the reader instead)" if (folder / "config.json").is_file() else ""
        raise AdapterError(f"adapter {label}: not a peft adapter folder (no adapter_config.json){hint}")
    return folder


def adapter_kind(adapter: str | Path) -> str:
    """The peft type of the adapter in folder `adapter` ("LORA", "IA3", "PROMPT_TUNING"...), or ValueError saying why
    there is none."""
    from peft import PeftConfig

    folder = check_adapter_folder(adapter)
    try:
        kind = PeftConfig.from_pretrained(str(folder)).peft_type
    except (ValueError, TypeError, OSError) as exc:
        raise AdapterError(f"adapter {folder}: unreadable adapter_config.json ({exc})") from exc
    except KeyError as exc:  # peft looks the type up in its table of kinds
        raise AdapterError(f"adapter {folder}: adapter_config.json names peft_type {exc.args[0]!r}, which peft does not know") from exc
    if kind is None:
        raise AdapterError(f"adapter {folder}: adapter_config.json names no peft_type; a peft adapter folder (save_pretrained) has one")
    # Without its weights peft takes the folder for a hub repo id and says only that the id is malformed.
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise AdapterError(f"adapter {folder}: no weights ({' or '.join(ADAPTER_WEIGHTS)}) beside its adapter_config.json: "
                         "an incomplete copy?")
    return kind.value


def load_merged(model: torch.nn.Module, adapter: str | Path) -> torch.nn.Module:
    """`model` with the peft adapter in folder `adapter` over it, merged into its weights: an adapted reader then runs
    exactly as fast as the base one. A prompt-tuning adapter has no weights to merge (its virtual tokens go before
    every prompt): the PeftModel comes back."""
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(adapter))
    return adapted if adapted.peft_config["default"].is_prompt_learning else adapted.merge_and_unload()


def query_encoder_folder(adapter: str | Path) -> Path | None:
    """The query encoder trained with an adapter, if it has one: retrieval for that adapter should use it."""
    folder = Path(adapter) / QUERY_ENCODER
    return folder if (folder / "config.json").is_file() else None


def virtual_tokens(model: torch.nn.Module) -> int:
    """Virtual tokens the active prompt-tuning adapter of `model` puts before every prompt (0 for any other model). A
    peft model may hold several adapters (an AdapterBank keeps every prompt-tuning one in one model); one is active."""
    config = getattr(model, "active_peft_config", None)
    return (config.num_virtual_tokens or 0) if config is not None and config.is_prompt_learning else 0


class AdapterBank:
    """Peft adapters over `base`, keyed by their folder's resolved path; `model(folder)` gives the model to run."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base
        self._by_kind: dict[str, torch.nn.Module] = {}  # peft type -> the PeftModel holding that kind's adapters
        self._loaded: dict[str, tuple[str, str]] = {}  # resolved folder -> (peft type, adapter name)

    def __len__(self) -> int:
        return len(self._loaded)

    def model(self, adapter: str | Path | None) -> torch.nn.Module:
        """The base model (adapter None) or the PeftModel with `adapter` active, loading it the first time."""
        if adapter is None:
            return self.base
        folder = check_adapter_folder(adapter)
        key = str(folder.resolve())
        if key not in self._loaded:
            self._loaded[key] = self._load(folder)
        kind, name = self._loaded[key]
        peft_model = self._by_kind[kind]
        peft_model.set_adapter(name)
        return peft_model

    def _load(self, folder: Path) -> tuple[str, str]:
        from peft import PeftModel

        kind = adapter_kind(folder)
        name = f"adapter{len(self._loaded)}"
        try:
            if kind in self._by_kind:
                self._by_kind[kind].load_adapter(str(folder), adapter_name=name)
            else:
                # The memo maps every parameter to itself: a new module tree over the same weight tensors.
                tree = copy.deepcopy(self.base, memo={id(p): p for p in self.base.parameters()})
                self._by_kind[kind] = PeftModel.from_pretrained(tree, str(folder), adapter_name=name).eval()
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            if kind in self._by_kind and name in self._by_kind[kind].peft_config:
                self._by_kind[kind].delete_adapter(name)
            raise AdapterError(f"adapter {folder} does not fit this reader: {str(exc).splitlines()[0]}") from exc
        return kind, name
