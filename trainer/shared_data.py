"""Where the project's shared data lies: ../shared/data beside the checkout, or $RAG_SHARED_DATA (a GPU machine's copy)."""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("RAG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
