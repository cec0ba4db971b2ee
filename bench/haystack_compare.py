"""Benchmark: our pipeline against a Haystack 2.x pipeline, same machine, corpus, models and questions.

Question sets: seeded samples (seed 0, `trainer.qa_data.sample`, 200 by default) of squad-open-dev
and of the nq-open-test records that have gold_ids. Corpus: the four corpus files, read with
`indexer.corpus.read_documents` and cut into the 100-word passages of `indexer.chunking.chunk_words`
(what our index makes), so both systems search exactly the same passages, with ids `{doc_id}#{n}`.
`--corpus-limit N` keeps the first whole documents up to N passages, plus every gold document of
the sampled questions, on both sides (recall is then over that smaller corpus; the JSON says so).

Each system runs in its own worker subprocess, so that its peak memory (RSS high-water mark,
`ru_maxrss`) is its own. The parent sends the questions one at a time and alternates the systems
question by question (and which one goes first), so that load from other jobs on a shared machine
hits both alike. Latency is measured inside each worker around one call (`Pipeline.ask` / Haystack
`Pipeline.run`), so the pipe between processes is not counted. A few warm-up questions from
nq-open-dev, outside both samples, run first on each side and are not counted.

Ours: `rag.pipeline.Pipeline.load(index, reader=--reader, adapter=--adapter)` and
`ask(question, k=5, mode=--mode)`; the defaults are what `Pipeline.load` and `ask` give. The index
is built fresh in the worker with `indexer.index.build_index` (build time = that call, encoder load
excluded, as in bench/index_build.py), or reused with `--index DIR` (build time then taken from
bench/results/index_build.json when it recorded that folder; `index_source` says which).

Haystack, as a user would write it from the Haystack 2.x tutorials:
- indexing: `SentenceTransformersDocumentEmbedder` (MiniLM folder; `meta_fields_to_embed=["title"]`,
  whose "title\\ntext" input is exactly what our passage encoder reads) then `DocumentWriter` into an
  `InMemoryDocumentStore`. Build time = embedding + writing (embedder load excluded), both also
  reported alone: writing alone is tiny, embedding is what compares with our build.
- query: `SentenceTransformersTextEmbedder` -> `InMemoryEmbeddingRetriever(top_k=5)` ->
  `PromptBuilder` -> `HuggingFaceLocalGenerator(model=<SmolLM2 safetensors folder>,
  task="text-generation", generation_kwargs={"max_new_tokens": 32, "do_sample": False})`.
- Why HuggingFaceLocalGenerator with a PromptBuilder, not HuggingFaceLocalChatGenerator: the issue
  names HuggingFaceLocalGenerator. It feeds the prompt string to transformers' text-generation
  pipeline, which applies no chat template to a string, so the PromptBuilder template is written in
  the model's own chat format (ChatML). We produce that string with the tokenizer's
  `apply_chat_template` around the Jinja user message, so it is exactly what a user copying the
  model card's format would write (and what HuggingFaceLocalChatGenerator would render).
  Generation ends at `<|im_end|>` (the model's eos); `max_new_tokens=32` is what a user would set
  for short answers (the default, 512, would only make Haystack slower when the model rambles).
  The reply is taken as Haystack returns it (stripped); `em_first_line` also reports EM on its
  first line, since our reader keeps only the first line.
- Prompt (`--haystack-prompt`): `tutorial` (default) is the user message of Haystack's "first RAG
  pipeline" tutorial ("Given the following information, answer the question. Context: ...
  Question: ... Answer:"), with the chat template's default system message; `ours` uses our
  reader's system prompt and passage layout (numbered, title + text), to separate the effect of
  the prompt from that of the pipeline.
Both sides run on the CPU (`--device`), float32, greedy, with the same torch thread count (`--threads`).

Report per set and system: EM, F1 (trainer.qa_metrics), recall@5 by gold document ids, p50/p95
latency, and overall: index build time, worker peak RSS, ratios (our p50 / Haystack p50, EM
difference) and the goals (EM >= Haystack's on both sets; p50 <= 0.7x Haystack's).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    QA_DIR, RESULTS_DIR, check_out, default_out, documents, log, machine_info, percentiles_ms, write_result,
)
from indexer.chunking import chunk_words  # noqa: E402
from indexer.records import Document  # noqa: E402
from trainer.qa_data import QARecord, read_qa, sample  # noqa: E402
from trainer.qa_metrics import exact_match, f1_score  # noqa: E402

K = 5
SEED = 0
HAYSTACK_MAX_NEW_TOKENS = 32
WARMUP_SET = "nq-open-dev"
P50_RATIO_GOAL = 0.7
# Haystack's "first RAG pipeline" tutorial prompt (user message), as a user would copy it.
TUTORIAL_PROMPT = """Given the following information, answer the question.

Context:
{% for document in documents %}
    {{ document.content }}
{% endfor %}

Question: {{question}}
Answer:"""
# Our reader's layout (rag.reader.DecoderReader.prompt_ids): numbered passages, title then text.
OURS_LAYOUT_PROMPT = (
    "Passages:\n{% for document in documents %}{% if not loop.first %}\n\n{% endif %}"
    "[{{ loop.index }}] {{ document.meta.title }}\n{{ document.content }}{% endfor %}\n\nQuestion: {{ question | trim }}"
)
SETS = ("squad-open-dev", "nq-open-test")


# -- shared by parent and workers --------------------------------------------------------------------

def selected_documents(doc_ids: list[str] | None) -> list[Document]:
    """The corpus documents to index, in corpus file order (all of them when doc_ids is None)."""
    if doc_ids is None:
        return list(documents())
    keep = set(doc_ids)
    return [d for d in documents() if d.id in keep]


def memory() -> dict[str, int]:
    """This process's RSS now and its high-water mark since it started, in bytes."""
    import psutil

    return {"rss_bytes": psutil.Process().memory_info().rss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB


# -- workers -----------------------------------------------------------------------------------------

class OursSystem:
    """Our pipeline: build (or reuse) the index, then `Pipeline.load` and `ask`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from indexer.encoder import TextEncoder
        from indexer.index import build_index
        from rag.pipeline import Pipeline

        self.mode = cfg["mode"]
        self.build: dict[str, Any] = {}
        if cfg["index"]:
            index_dir = Path(cfg["index"])
            self.build = {"index_source": "reused", **cfg["reused_build"]}
        else:
            docs = selected_documents(cfg["doc_ids"])
            index_dir = Path(cfg["work_dir"]) / "ours-index"
            encoder = TextEncoder(device=cfg["device"])
            t0 = time.perf_counter()
            report = build_index(index_dir, docs, encoder, progress=False)
            self.build = {"index_source": "built", "seconds": time.perf_counter() - t0, "encode_seconds": report.encode_seconds,
                          "index_seconds": report.index_seconds, "passages": report.passages_encoded, "documents": report.documents_added}
            # The pipeline loads its own query encoder; the build's copy would only add to the serving memory.
            del encoder, docs
            gc.collect()
        t0 = time.perf_counter()
        self.pipeline = Pipeline.load(index_dir, reader=cfg["reader"], adapter=cfg["adapter"], device=cfg["device"])
        self.load_seconds = time.perf_counter() - t0
        self.config = {"index_dir": str(index_dir), "reader": self.pipeline.reader.name, "adapter": getattr(self.pipeline.reader, "adapter", None),
                       "reader_class": type(self.pipeline.reader).__name__, "mode": self.mode, "k": K,
                       "max_new_tokens": getattr(self.pipeline.reader, "max_new_tokens", None)}

    def ask(self, question: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        answer = self.pipeline.ask(question, k=K, mode=self.mode)
        seconds = time.perf_counter() - t0
        return {"answer": answer.text, "seconds": seconds, "passages": [[h.id, h.doc_id] for h in answer.passages]}


class HaystackSystem:
    """The Haystack 2.x pipeline a user would write (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from haystack import Document as HDocument
        from haystack import Pipeline as HPipeline
        from haystack.components.builders import PromptBuilder
        from haystack.components.embedders import SentenceTransformersDocumentEmbedder, SentenceTransformersTextEmbedder
        from haystack.components.generators import HuggingFaceLocalGenerator
        from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
        from haystack.components.writers import DocumentWriter
        from haystack.document_stores.in_memory import InMemoryDocumentStore
        from haystack.utils import ComponentDevice
        from transformers import AutoTokenizer

        from indexer.encoder import resolve_model_path
        from rag.models import resolve_reader_path

        device = ComponentDevice.from_str(cfg["device"])
        encoder_path = resolve_model_path("all-MiniLM-L6-v2")
        reader_path = resolve_reader_path("SmolLM2-135M-Instruct")
        docs = selected_documents(cfg["doc_ids"])

        store = InMemoryDocumentStore()
        embedder = SentenceTransformersDocumentEmbedder(model=encoder_path, device=device, meta_fields_to_embed=["title"],
                                                        progress_bar=False, local_files_only=True)
        embedder.warm_up()
        t0 = time.perf_counter()
        # Same passages as our index. An empty title stays out of meta: Haystack would embed "\ntext", we embed "text".
        passages = [HDocument(id=p.id, content=p.text, meta={"doc_id": p.doc_id, **({"title": p.title} if p.title else {})})
                    for d in docs for p in chunk_words(d)]
        embedded = embedder.run(documents=passages)["documents"]
        t1 = time.perf_counter()
        written = DocumentWriter(document_store=store).run(documents=embedded)["documents_written"]
        t2 = time.perf_counter()
        self.build = {"index_source": "built", "seconds": t2 - t0, "embed_seconds": t1 - t0, "write_seconds": t2 - t1,
                      "passages": written, "documents": len(docs)}
        del embedder, embedded, passages, docs
        gc.collect()

        t0 = time.perf_counter()
        user = TUTORIAL_PROMPT if cfg["haystack_prompt"] == "tutorial" else OURS_LAYOUT_PROMPT
        messages = [{"role": "user", "content": user}]
        if cfg["haystack_prompt"] == "ours":
            from rag.reader import SYSTEM_PROMPT

            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        # The model's ChatML around the Jinja text (the chat template passes message content through verbatim).
        template = AutoTokenizer.from_pretrained(reader_path).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pipe = HPipeline()
        pipe.add_component("embedder", SentenceTransformersTextEmbedder(model=encoder_path, device=device, progress_bar=False,
                                                                         local_files_only=True))
        pipe.add_component("retriever", InMemoryEmbeddingRetriever(document_store=store, top_k=K))
        pipe.add_component("prompt_builder", PromptBuilder(template=template, required_variables=["question", "documents"]))
        generation = {"max_new_tokens": HAYSTACK_MAX_NEW_TOKENS, "do_sample": False}
        pipe.add_component("llm", HuggingFaceLocalGenerator(model=reader_path, task="text-generation", device=device,
                                                            generation_kwargs=dict(generation)))
        pipe.connect("embedder.embedding", "retriever.query_embedding")
        pipe.connect("retriever", "prompt_builder.documents")
        pipe.connect("prompt_builder", "llm")
        pipe.warm_up()
        self.pipeline = pipe
        self.load_seconds = time.perf_counter() - t0
        self.config = {"encoder": encoder_path, "reader": reader_path, "top_k": K, "generation_kwargs": generation,
                       "prompt": cfg["haystack_prompt"], "template": template, "haystack": _version("haystack-ai")}

    def ask(self, question: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.pipeline.run({"embedder": {"text": question}, "prompt_builder": {"question": question}},
                                include_outputs_from={"retriever"})
        seconds = time.perf_counter() - t0
        replies = out["llm"]["replies"]
        return {"answer": replies[0].strip() if replies else "", "seconds": seconds,
                "passages": [[d.id, d.meta.get("doc_id")] for d in out["retriever"]["documents"]]}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def worker(system: str, config_path: Path) -> None:
    """Serve one system over stdin/stdout JSON lines: a ready line, then one reply per request."""
    # The protocol gets its own copy of stdout; fd 1 goes to stderr, so library prints cannot corrupt it.
    proto: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    try:
        import torch

        cfg = json.loads(config_path.read_text())
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        baseline = memory()
        t0 = time.perf_counter()
        impl = OursSystem(cfg) if system == "ours" else HaystackSystem(cfg)
        send({"ready": True, "build": impl.build, "load_seconds": impl.load_seconds, "setup_seconds": time.perf_counter() - t0,
              "config": impl.config, "memory_baseline": baseline, "memory_ready": memory(), "torch_threads": torch.get_num_threads()})
        for line in sys.stdin:
            request = json.loads(line)
            if request["cmd"] == "ask":
                send(impl.ask(request["question"]))
            elif request["cmd"] == "stats":
                send({"memory_end": memory()})
            elif request["cmd"] == "quit":
                break
    except BaseException:
        send({"error": traceback.format_exc()})
        raise


class Worker:
    """The parent's handle on one worker subprocess."""

    def __init__(self, system: str, config_path: Path, threads: int) -> None:
        self.system = system
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HAYSTACK_TELEMETRY_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", system, "--worker-config", str(config_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)

    def receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.system} worker exited (code {self.proc.wait()}) without answering")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.system} worker failed:\n{reply['error']}")
        return reply

    def request(self, **request: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# -- parent ------------------------------------------------------------------------------------------

def question_sets(n: int) -> dict[str, list[QARecord]]:
    """The seeded samples: squad-open-dev, and nq-open-test restricted to records with gold_ids."""
    squad = read_qa(QA_DIR / "squad-open-dev.jsonl.gz")
    nq = [r for r in read_qa(QA_DIR / "nq-open-test.jsonl.gz") if r.gold_ids]
    return {"squad-open-dev": sample(squad, n, seed=SEED), "nq-open-test": sample(nq, n, seed=SEED)}


def corpus_selection(limit: int, gold: set[str]) -> tuple[list[str] | None, dict[str, Any]]:
    """Doc ids to index: None for the whole corpus, else the first documents up to `limit` passages plus all gold documents."""
    total_docs = total_passages = 0
    chosen: list[str] = []
    passages = gold_added = 0
    full = not limit  # once a document would pass the limit, only gold documents are added
    for doc in documents():
        n = len(chunk_words(doc))
        total_docs += 1
        total_passages += n
        if limit:
            full = full or passages + n > limit
            if not full or doc.id in gold:
                gold_added += int(full)
                chosen.append(doc.id)
                passages += n
    info: dict[str, Any] = {"corpus_documents": total_docs, "corpus_passages": total_passages, "limit": limit or None}
    if not limit:
        return None, {**info, "documents": total_docs, "passages": total_passages, "recall_over": "whole corpus"}
    missing = sorted(gold - set(chosen))
    return chosen, {**info, "documents": len(chosen), "passages": passages, "gold_documents_in_corpus": len(gold) - len(missing),
                    "gold_documents_added_beyond_limit": gold_added, "gold_documents_missing": missing,
                    "recall_over": "limited corpus: first documents up to the limit plus every sampled question's gold documents"}


def reused_build(index: Path) -> dict[str, Any]:
    """Build time of a reused index, from bench/results/index_build.json when that run built this folder."""
    record = RESULTS_DIR / "index_build.json"
    if record.is_file():
        data = json.loads(record.read_text())
        if Path(data.get("index", "")).resolve() == index.resolve() and "build" in data:
            build = data["build"]
            return {"seconds": build["total_seconds"], "encode_seconds": build.get("encode_seconds"),
                    "index_seconds": build.get("index_seconds"), "passages": build.get("passages"),
                    "documents": build.get("documents"), "seconds_from": f"{record.name} ({data.get('timestamp')})"}
    return {"seconds": None, "seconds_from": f"no record of {index} in {record}"}


def score(record: QARecord, reply: dict[str, Any]) -> dict[str, Any]:
    """One system's answer to one question, scored."""
    gold = set(record.gold_ids)
    first_line = reply["answer"].split("\n", 1)[0].strip()
    return {"answer": reply["answer"], "em": exact_match(reply["answer"], record.answers),
            "f1": f1_score(reply["answer"], record.answers), "em_first_line": exact_match(first_line, record.answers),
            "found@5": any(doc_id in gold for _, doc_id in reply["passages"][:K]),
            "ms": reply["seconds"] * 1e3, "passages": [pid for pid, _ in reply["passages"]]}


def summarize(rows: list[dict[str, Any]], system: str) -> dict[str, Any]:
    scored = [r[system] for r in rows]
    lat = percentiles_ms([s["ms"] / 1e3 for s in scored])
    mean = lambda key: sum(float(s[key]) for s in scored) / len(scored)  # noqa: E731
    return {"n": len(scored), "em": mean("em"), "f1": mean("f1"), "em_first_line": mean("em_first_line"),
            "recall@5": mean("found@5"), "latency_p50_ms": lat["p50_ms"], "latency_p95_ms": lat["p95_ms"],
            "latency_mean_ms": lat["mean_ms"]}


def alternate(workers: dict[str, Worker], records: list[QARecord], start: int) -> Iterator[dict[str, Any]]:
    """Ask each question of both systems back to back; the one that goes first alternates."""
    order = list(workers)
    for i, record in enumerate(records):
        first = order if (start + i) % 2 == 0 else order[::-1]
        replies = {name: workers[name].request(cmd="ask", question=record.question) for name in first}
        yield {"id": record.id, "question": record.question, "answers": record.answers, "gold_ids": record.gold_ids,
               "first": first[0], "loadavg_1m": os.getloadavg()[0], **{name: score(record, replies[name]) for name in order}}


def run(args: argparse.Namespace) -> None:
    out = check_out(args.out)
    info = machine_info()
    if args.index and args.corpus_limit:
        raise SystemExit("--index reuses an index over the whole corpus: it cannot be combined with --corpus-limit")
    sets = question_sets(args.questions)
    gold = {g for records in sets.values() for r in records for g in r.gold_ids}
    doc_ids, corpus = corpus_selection(args.corpus_limit, gold)
    log(f"corpus: {corpus['documents']} documents, {corpus['passages']} passages ({corpus['recall_over']})")
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="haystack-compare-", dir=args.work_dir))
    cfg = {"doc_ids": doc_ids, "index": str(args.index) if args.index else None, "reader": args.reader, "adapter": args.adapter,
           "mode": args.mode, "device": args.device, "haystack_prompt": args.haystack_prompt, "work_dir": str(work_dir),
           "threads": args.threads,
           "reused_build": reused_build(args.index) if args.index else {}}
    config_path = work_dir / "config.json"
    config_path.write_text(json.dumps(cfg))
    workers: dict[str, Worker] = {}
    result: dict[str, Any] = {"k": K, "seed": SEED, "questions_per_set": args.questions, "corpus": corpus, "systems": {}, "sets": {}}
    try:
        # One after the other, so neither build shares the CPU with the other.
        for name in ("ours", "haystack"):
            log(f"{name}: starting (build or open the index, load the models)")
            workers[name] = Worker(name, config_path, args.threads)
            ready = workers[name].receive()
            ready.pop("ready")
            result["systems"][name] = ready
            log(f"{name}: ready, build {ready['build']}, load {ready['load_seconds']:.1f} s")
        warmup = [r for r in read_qa(QA_DIR / f"{WARMUP_SET}.jsonl.gz")[: args.warmup]]
        for row in alternate(workers, warmup, 0):
            log(f"warm-up: ours {row['ours']['ms']:.0f} ms, haystack {row['haystack']['ms']:.0f} ms")
        start = 0
        for name, records in sets.items():
            rows = []
            for row in alternate(workers, records, start):
                rows.append(row)
                if len(rows) % 10 == 0 or len(rows) == len(records):
                    log(f"{name}: {len(rows)}/{len(records)}; last: ours {row['ours']['ms']:.0f} ms {row['ours']['answer']!r:.40}, "
                        f"haystack {row['haystack']['ms']:.0f} ms {row['haystack']['answer']!r:.40}")
            start += len(records)
            entry = {"n": len(rows), **{s: summarize(rows, s) for s in workers}}
            entry["top5_overlap"] = sum(len(set(r["ours"]["passages"]) & set(r["haystack"]["passages"])) / K for r in rows) / len(rows)
            entry["ratios"] = ratios(entry["ours"], entry["haystack"])
            entry["questions"] = rows
            result["sets"][name] = entry
            log(f"{name}: ours {fmt(entry['ours'])}; haystack {fmt(entry['haystack'])}")
        for name, w in workers.items():
            result["systems"][name].update(w.request(cmd="stats"))
    finally:
        for w in workers.values():
            w.close()
        if not args.keep_index:
            shutil.rmtree(work_dir, ignore_errors=True)
    all_rows = [r for entry in result["sets"].values() for r in entry["questions"]]
    result["overall"] = {s: summarize(all_rows, s) for s in workers}
    result["overall"]["ratios"] = ratios(result["overall"]["ours"], result["overall"]["haystack"])
    result["overall"]["build_seconds"] = {s: result["systems"][s]["build"].get("seconds") for s in workers}
    result["overall"]["peak_rss_mib"] = {s: result["systems"][s]["memory_end"]["peak_rss_bytes"] / 2**20 for s in workers}
    result["overall"]["end_rss_mib"] = {s: result["systems"][s]["memory_end"]["rss_bytes"] / 2**20 for s in workers}
    em_met = all(e["ratios"]["em_difference"] >= 0 for e in result["sets"].values())
    p50_met = all(e["ratios"]["p50_ratio"] <= P50_RATIO_GOAL for e in result["sets"].values())
    result["goals"] = {"em_at_least_haystack_on_both_sets": em_met, "p50_ratio_goal": P50_RATIO_GOAL,
                       "p50_at_most_goal_on_both_sets": p50_met}
    result["notes"] = {
        "peak_rss": "ru_maxrss of each worker process over its whole life: model loads, index build (when built), questions",
        "latency": "inside the worker, one call per question (ours: Pipeline.ask; Haystack: Pipeline.run), after warm-up",
        "build": "ours: build_index (built) or the recorded full build (reused); Haystack: document embedding + DocumentWriter",
    }
    write_result(out, result, info)
    log(f"overall: ours {fmt(result['overall']['ours'])}; haystack {fmt(result['overall']['haystack'])}; "
        f"ratios {result['overall']['ratios']}; goals {result['goals']}")


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    return {"p50_ratio": ours["latency_p50_ms"] / theirs["latency_p50_ms"], "p95_ratio": ours["latency_p95_ms"] / theirs["latency_p95_ms"],
            "em_difference": ours["em"] - theirs["em"], "f1_difference": ours["f1"] - theirs["f1"]}


def fmt(s: dict[str, Any]) -> str:
    return (f"EM {s['em']:.3f} F1 {s['f1']:.3f} R@5 {s['recall@5']:.3f} "
            f"p50 {s['latency_p50_ms']:.0f} ms p95 {s['latency_p95_ms']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=200, help="sample size per question set (default %(default)s)")
    ap.add_argument("--corpus-limit", type=int, default=0,
                    help="index only the first documents up to N passages plus the sampled questions' gold documents (0 = all)")
    ap.add_argument("--index", type=Path, default=None, help="reuse this built index for our side instead of building one")
    ap.add_argument("--reader", default=None, help="our reader, passed to Pipeline.load (default: its default)")
    ap.add_argument("--adapter", default=None, help="our reader's adapter folder, passed to Pipeline.load")
    ap.add_argument("--mode", default="hybrid", choices=("dense", "sparse", "hybrid"), help="our retrieval mode (default %(default)s, as ask)")
    ap.add_argument("--haystack-prompt", default="tutorial", choices=("tutorial", "ours"),
                    help="Haystack prompt: the tutorial's, or our reader's instructions and layout (default %(default)s)")
    ap.add_argument("--device", default="cpu", help="torch device for both systems (default %(default)s)")
    # On a saturated 2-core machine 1 thread ran the reader 2-3x faster than 2 (threads wait on preempted peers).
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both workers (default 0: torch's default)")
    ap.add_argument("--warmup", type=int, default=3, help=f"warm-up questions from {WARMUP_SET} per system (default %(default)s)")
    ap.add_argument("--work-dir", default=None, help="where to build the fresh index (default: the system temp folder)")
    ap.add_argument("--keep-index", action="store_true", help="keep the freshly built index and config (for debugging)")
    ap.add_argument("--out", type=Path, default=default_out(__file__), help="result JSON (default %(default)s)")
    ap.add_argument("--worker", choices=("ours", "haystack"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.worker_config)
    else:
        run(args)


if __name__ == "__main__":
    main()
