"""A writer for tests/test_index_crash.py to kill: it opens an index and upserts a fixed stream of changes.

Step k of the stream is one upsert (so one generation): a new document `c{k}`, for odd k a new version
of `c{k-1}`, and every LARGE_EVERY-th step LARGE_DOCS two-passage documents. After each upsert returns
the writer prints `ACK <generation> <doc_id>` and flushes; before each it prints `BEGIN <step>`.

`hook` makes the writer stop, at step `hook_step`, inside the write protocol (it prints
`HOOK <name> <step>` and sleeps there, waiting to be killed):
  before-commit   SQLite transaction written, not committed
  commit          SQLite committed, nothing derived yet
  dense-saved     FAISS file replaced, its generation not yet recorded, tantivy not updated
  sparse-before   about to update tantivy (FAISS already written when it is checkpointed)
  sparse-applied  tantivy committed, manifest and in-memory snapshot not yet updated

Run standalone: python tests/crash_writer.py INDEX ENCODER_PATH [--start K] [--steps N] [--hook NAME --hook-step K]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import TextIO

import indexer.index as index_module
from indexer.dense import DenseIndex
from indexer.encoder import TextEncoder
from indexer.index import Index
from indexer.records import Document
from indexer.sparse import SparseIndex
from indexer.store import PassageStore

LARGE_EVERY = 4
LARGE_DOCS = 50
HOOKS = ("before-commit", "commit", "dense-saved", "sparse-before", "sparse-applied")
# Words drawn at random (seeded per document): documents that differ only in a word or two would
# get nearly equal vectors from the tiny random encoder, and dense checks could not tell them apart.
VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu lorem ipsum dolor sit amet "
         "consectetur adipiscing elit sed eiusmod tempor incididunt labore magna aliqua").split()


def _words(seed: str, n: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def version_word(n: int, version: int) -> str:
    """The word only version `version` of document c{n} contains."""
    return f"crash{n}v{version}"


def crash_document(n: int, version: int) -> Document:
    words = [version_word(n, version)] + _words(f"c{n}v{version}", 20)
    return Document(f"c{n}", f"Crash {n}", " ".join(words), {"version": version})


def big_word(step: int, j: int) -> str:
    return f"big{step}w{j}"


def big_document(step: int, j: int) -> Document:
    words = [big_word(step, j)] + _words(f"big{step}-{j}", 129)  # 130 words: two passages
    return Document(f"big{step}-{j}", f"Big {step}", " ".join(words))


def step_documents(step: int) -> list[Document]:
    docs = [crash_document(step, step)]
    if step % 2 == 1:
        docs.append(crash_document(step - 1, step))
    if step % LARGE_EVERY == LARGE_EVERY - 1:
        docs.extend(big_document(step, j) for j in range(LARGE_DOCS))
    return docs


def is_large(step: int) -> bool:
    return step % LARGE_EVERY == LARGE_EVERY - 1


def expected_documents(steps_applied: int) -> dict[str, Document]:
    """The documents the stream added once its first `steps_applied` steps are committed."""
    docs: dict[str, Document] = {}
    for step in range(steps_applied):
        for doc in step_documents(step):
            docs[doc.id] = doc
    return docs


def _install_hook(hook: str, hook_step: int, current: list[int], say) -> None:
    def stop_here(where: str) -> None:
        if current[0] == hook_step:
            say(f"HOOK {where} {hook_step}")
            time.sleep(600)  # the parent kills us here

    def around(cls, name: str, before: bool) -> None:
        original = getattr(cls, name)

        def wrapped(self, *args, **kwargs):
            if before:
                stop_here(hook)
            result = original(self, *args, **kwargs)
            if not before:
                stop_here(hook)
            return result

        setattr(cls, name, wrapped)

    if hook == "before-commit":
        around(PassageStore, "commit", before=True)
    elif hook == "commit":
        around(PassageStore, "commit", before=False)
    elif hook == "dense-saved":
        around(DenseIndex, "save", before=False)
    elif hook == "sparse-before":
        around(SparseIndex, "apply", before=True)
    elif hook == "sparse-applied":
        around(SparseIndex, "apply", before=False)
    else:
        raise ValueError(f"unknown hook {hook!r}")


def run(index_path: str, encoder_path: str, start: int = 0, steps: int = 1000, hook: str | None = None,
        hook_step: int = -1, checkpoint_fraction: float | None = None, out: str | None = None) -> None:
    """Upsert steps start, start+1, ... of the stream, acknowledging each one."""
    stream: TextIO = open(out, "a", buffering=1) if out else sys.stdout

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    current = [-1]
    if hook:
        _install_hook(hook, hook_step, current, say)
    if checkpoint_fraction is not None:
        index_module.DENSE_CHECKPOINT_FRACTION = checkpoint_fraction
    index = Index.open(index_path, TextEncoder(encoder_path, device="cpu"))
    say(f"OPEN {index.generation} {os.getpid()}")
    for step in range(start, start + steps):
        current[0] = step
        docs = step_documents(step)
        say(f"BEGIN {step}")
        report = index.upsert(docs)
        say(f"ACK {report.generation} {docs[0].id}")
    index.close()
    say("DONE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("encoder")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--hook", choices=HOOKS)
    parser.add_argument("--hook-step", type=int, default=-1)
    parser.add_argument("--checkpoint-fraction", type=float)
    args = parser.parse_args(argv)
    run(args.index, args.encoder, args.start, args.steps, args.hook, args.hook_step, args.checkpoint_fraction)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
