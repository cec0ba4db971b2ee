"""Command-line options every answering command shares (`rag-serve ask`, `rag-eval qa`, `rag-serve run`)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from indexer.encoder import resolve_device
from indexer.index import MODES
from rag.adapters import adapter_kind, query_encoder_folder
from rag.editing import SCOPE_KINDS
from rag.models import DEFAULT_READER, GENERATIVE_READER
from rag.pipeline import MAX_K, TWO_HOP_KINDS, Pipeline


def add_pipeline_arguments(parser: argparse.ArgumentParser, index_required: bool = True,
                           scopes: Sequence[str] = SCOPE_KINDS) -> None:
    """--index, --k, --mode, --reader, --adapter, --query-encoder, --constrain, --scope, --two-hop, --device.

    `scopes` are the --scope choices the command accepts (`rag-eval edits` has no use for none)."""
    parser.add_argument("--index", type=Path, required=index_required, help="index folder (built by `rag-index build`)")
    parser.add_argument("--k", type=int, default=None,
                        help="passages given to the reader; 0 answers closed-book (default: the reader's own: the span reader's, chosen on "
                             "dev data; 5 for a causal LM; 10 for a Fusion-in-Decoder reader)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="retrieval: dense, sparse (BM25) or hybrid (default: hybrid, or dense on an index built with --no-sparse)")
    parser.add_argument("--reader", default=DEFAULT_READER,
                        help=f"a span reader folder, a causal LM name or folder such as {GENERATIVE_READER}, or the folder of an "
                             "encoder-decoder model (T5, BART), read Fusion-in-Decoder style "
                             "(default: the shipped span reader rag/readers/span-minilm)")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="a peft adapter folder to load over the reader; its query_encoder/ subfolder, when it has one, embeds "
                             "the questions (unless --query-encoder)")
    parser.add_argument("--query-encoder", type=Path, default=None,
                        help="embed questions with this encoder folder (e.g. export/encoder of `rag-train joint --query-side-only`) "
                             "against the index's own passage vectors")
    parser.add_argument("--constrain", action="store_true", help="answers must be substrings of the retrieved passages")
    none = ", none (ignore the edit memory)" if "none" in scopes else ""
    parser.add_argument("--scope", choices=scopes, default="auto",
                        help=f"which edits apply to a question: the trained scope classifier, a similarity threshold{none}, "
                             "or auto (default: the classifier when shipped)")
    parser.add_argument("--two-hop", choices=TWO_HOP_KINDS, default="auto",
                        help="questions that ask beyond an edit (\"the capital of the country X is a citizen of\" after an edit "
                             "of X's citizenship): auto (default) finds them with the shipped detector and asks them again with "
                             "the edit's answer in place of their first hop (\"the capital of Iraq\"), or has the generative reader "
                             "read the edit and passages about its answer; none gives them no special reading. Only with the scope "
                             "classifier: with --scope similarity they get none either")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")


def pipeline_from_args(args: argparse.Namespace, writable: bool = False) -> Pipeline:
    """Load the pipeline the options describe. `writable` opens the index for upserts too (the server).

    A --k left out becomes the loaded reader's default and a --mode left out hybrid, or dense where the index has no BM25
    (`args.k` and `args.mode` are set), so callers read one value.
    """
    if args.k is not None and args.k < 0:
        raise ValueError(f"--k must be 0 or more, got {args.k}")
    if args.k is not None and args.k > MAX_K:
        raise ValueError(f"--k must be at most {MAX_K}, the most a request may ask for, got {args.k}")
    if args.adapter is not None:
        adapter_kind(args.adapter)  # refuses, with a message, a folder peft could not load
    # The index opens first: a wrong folder fails at once, not after the reader has loaded.
    pipeline = Pipeline.load(args.index, reader=args.reader, adapter=args.adapter, device=args.device, constrain_to_passages=args.constrain,
                             scope=args.scope, two_hop=args.two_hop, writable=writable)
    # An adapter trained with its own query encoder (rag-train fewshot --train-query-encoder) retrieves with it, as the
    # server and rag-eval fewshot have it do, unless --query-encoder says otherwise.
    query_encoder = args.query_encoder or (query_encoder_folder(args.adapter) if args.adapter is not None else None)
    if query_encoder is not None:
        pipeline.retriever = pipeline.load_query_encoder(query_encoder, resolve_device(args.device))
    if args.k is None:
        args.k = pipeline.reader.default_k
    if args.mode is None:
        args.mode = "hybrid" if pipeline.index is None else pipeline.index.default_mode
    elif pipeline.index is not None:
        pipeline.index.check_mode(args.mode)
    return pipeline
