"""Small models kept as one JSON file (the two-hop detector, the answer-type classifier): reading one back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

from indexer.encoder import same_encoder


class ReadsVectors(Protocol):
    encoder: str  # the encoder whose vectors the model reads


Model = TypeVar("Model", bound=ReadsVectors)


def read_json_model(path: str | Path, kind: str, what: str, required: Sequence[str], train_command: str) -> dict[str, Any]:
    """The fields of the `kind` model file at `path`; ValueError naming it as `what` ("two-hop detector") and saying
    what is wrong (unreadable, another kind, a field missing) and that `train_command` makes one."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        raise ValueError(f"{path} is not a {what} file (kind {kind!r}): train one with `{train_command}`")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ValueError(f"{what} {path} lacks {', '.join(missing)}: retrain it with `{train_command}`")
    return raw


def load_for_encoder(path: str | Path, load: Callable[[str | Path], Model], encoder: str) -> Model | None:
    """The model `load` reads from `path` when it reads vectors of `encoder` (the index's); None when there is no such
    file or it reads another encoder's."""
    if not Path(path).is_file():
        return None
    model = load(path)
    return model if same_encoder(model.encoder, encoder) else None
