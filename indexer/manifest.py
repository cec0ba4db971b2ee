"""manifest.json: what an index folder is (format, encoder, index kinds, chunking) and its last state."""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class IndexFolderError(RuntimeError):
    """A problem with an index folder that the user must fix (wrong folder, encoder, format...)."""


@dataclass
class Manifest:
    encoder: str
    dim: int
    encoder_dtype: str = "float32"  # the precision it encodes in; updates and questions are encoded in it too
    normalize: bool = True
    dense: str = "flat"
    sparse: bool = True
    chunk_words: int = 100
    chunk_overlap: int = 0
    chunk_tokens: int = 0
    format_version: int = FORMAT_VERSION
    generation: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        """Replace the manifest atomically."""
        tmp = folder / (MANIFEST + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(self), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / MANIFEST)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of index folder `folder`; IndexFolderError saying what is wrong when there is none fit to use."""
        path = folder / MANIFEST
        if folder.exists() and not folder.is_dir():
            raise IndexFolderError(f"{folder} is a file, not an index folder")
        if not folder.is_dir():
            raise IndexFolderError(f"{folder}: no such index folder (build one with `rag-index build --out {folder} --corpus FILE`)")
        if not path.is_file():
            raise IndexFolderError(f"{folder}: not an index folder (it has no {MANIFEST})")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexFolderError(f"{path}: unreadable manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise IndexFolderError(f"{path}: unreadable manifest (a JSON {type(data).__name__}, not an object)")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFolderError(
                f"{folder}: index format version {version}, this program reads version {FORMAT_VERSION}: rebuild the index"
            )
        # Each field's type from its annotation; a field without a default must be there.
        hints = get_type_hints(cls)
        for f in fields(cls):
            kind, value = get_origin(hints[f.name]) or hints[f.name], data.get(f.name)
            required = f.default is MISSING and f.default_factory is MISSING
            if (value is None and required) or (value is not None and (
                    not isinstance(value, kind) or (kind is int and isinstance(value, bool)))):
                raise IndexFolderError(f"{path}: unreadable manifest ({f.name} is {json.dumps(value)}, not {JSON_WORDS[kind]}): "
                                       "was it edited by hand? Rebuild the index")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def check_encoder(self, name: str, dim: int, dtype: str | None = None) -> None:
        """Refuse to mix vectors of two encoders, or of two precisions (`dtype`, when the encoder has one), in one index."""
        from indexer.encoder import same_encoder  # torch and transformers: only for the callers that encode

        # same_encoder: a folder by any path to it (indexes built before names were absolute hold relative ones).
        if not same_encoder(name, self.encoder) or dim != self.dim:
            raise IndexFolderError(
                f"this index was built with encoder {self.encoder!r} ({self.dim}-d), not {name!r} ({dim}-d): "
                f"use --encoder {self.encoder} or build a new index"
            )
        if dtype is not None and dtype != self.encoder_dtype:
            raise IndexFolderError(f"this index was encoded in {self.encoder_dtype}, not {dtype}: "
                                   f"open it with an encoder in {self.encoder_dtype} (or none: it loads its own)")


# How a message names the JSON type of a manifest field (its annotation), for a manifest edited by hand.
JSON_WORDS = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}
