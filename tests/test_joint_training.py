"""`rag-train joint` on tiny models and a tiny index: retrieval, refresh, learning, exact resume, export."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from conftest import make_documents, write_topic_qa
from indexer.cli import main as index_main
from indexer.encoder import TextEncoder, encoder_input
from indexer.index import Index
from serve.cli import main as serve_main
from rag.command_line import run_lock
from trainer.cli import main_train
from trainer.joint_training import CHECKPOINT, JointTrainer, JointTrainingConfig, Refresh, run_records, train_joint
from trainer.training_index import TrainingIndex, evaluating, hide_own_elsewhere, passage_scores, rerank
from trainer.qa_data import QARecord

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_topic_qa(tmp_path_factory.mktemp("qa") / "qa-train.jsonl.gz")


def config(topic_index: Path, qa_file: Path, reader: str, out: Path, **changes) -> JointTrainingConfig:
    base = JointTrainingConfig(index=topic_index, train=[qa_file], out=out, reader=reader, top_k=3, steps=4, batch_size=2,
                               dev_size=4, dev_eval=0, save_every=2, device="cpu", threads=1)
    return replace(base, **changes)


def test_settings_that_cannot_work_are_refused(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    assert Refresh.parse("every:5") == Refresh("every", 5) and str(Refresh.parse("rerank:20")) == "rerank:20"
    for bad in ("every", "every:0", "rerank:x", "sometimes"):
        with pytest.raises(ValueError, match="--refresh"):
            Refresh.parse(bad)
    cases = [(dict(loss="adist"), "Fusion-in-Decoder"), (dict(query_side_only=True, refresh="every:2"), "nothing to refresh"),
             (dict(refresh="rerank:2"), "at least --top-k"), (dict(tau=0.0), "--tau"),
             (dict(candidates=2), "--candidates 2 must be at least --top-k 3"), (dict(loss="loop", candidates=5), "drop --candidates"),
             (dict(refresh="rerank:4", candidates=5), r"--candidates \(5\)"), (dict(candidates=-1), "--candidates"),
             (dict(reader_first=4), "--reader-first 4 leaves none"),
             (dict(reader_first=-1), "--reader-first"), (dict(held_out_share=1.0), "--held-out-share"), (dict(train=[tmp_path / "nq-open-test.jsonl.gz"]), "not found"), (dict(grad_accum=0), "--grad-accum"),
             (dict(top_k=101), "--top-k 101: at most 100"), (dict(top_k=1), "--top-k 1 without --candidates")]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", **changes).check()
    evaluation_only = tmp_path / "squad-open-dev.jsonl.gz"
    evaluation_only.write_bytes(qa_file.read_bytes())
    with pytest.raises(ValueError, match="evaluation-only"):
        config(topic_index, evaluation_only, tiny_reader_path, tmp_path / "run").check()
    with pytest.raises(ValueError, match="evaluation-only"):
        config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", dev=evaluation_only).check()


def test_training_index_searches_like_the_index_and_refreshes(topic_index: Path, tiny_encoder_path: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation 0 is the index's own vectors; a refresh with the unchanged encoder reproduces them in a new file."""
    import indexer.index
    import trainer.training_index
    from rag.retriever import DualEncoder

    for module in (indexer.index, trainer.training_index):  # fused from fewer than the 20 passages, so a wrong depth shows
        monkeypatch.setattr(module, "HYBRID_DEPTH", 4)

    index = Index.open(topic_index, readonly=True)
    search = TrainingIndex(index, tmp_path / "gens")
    queries = ["topic3 alpha", "topic7 bravo"]
    vectors = TextEncoder(tiny_encoder_path)(queries)
    expected = index.search_many(queries, k=5, mode="dense", query_vectors=vectors)
    assert [[h.id for h in hits] for hits in search.search(vectors, 5)] == [[h.id for h in hits] for hits in expected]
    assert [[h.id for h in hits] for hits in search.search_many(queries, 5, "dense", vectors)] == [[h.id for h in hits] for hits in expected]
    served = index.search_many(queries, k=3, mode="hybrid", query_vectors=vectors)  # the system as served: fused with BM25
    hybrid = search.search_many(queries, 3, "hybrid", vectors)
    assert [[(h.id, h.score) for h in hits] for hits in hybrid] == [[(h.id, h.score) for h in hits] for hits in served]
    rows = [h.row for h in expected[0]]
    stored = dict(zip(*index.store.vectors(rows, index.generation, index.manifest.dim)))
    assert np.array_equal(search.stored_vectors(rows), np.stack([stored[r] for r in rows]))
    report = search.refresh(DualEncoder(tiny_encoder_path))
    assert report["generation"] == search.generation == 1 and report["passages"] == 20 and report["seconds"] > 0
    assert (tmp_path / "gens" / "dense-1-0of1.faiss").is_file()
    refreshed = search.search(vectors, 5)
    assert [[h.id for h in hits] for hits in refreshed] == [[h.id for h in hits] for hits in expected]
    assert [h.score for h in refreshed[0]] == pytest.approx([h.score for h in expected[0]], abs=1e-5)
    every = [p.row for p in index.store.iter_passages(index.generation)]  # each re-embedded passage under its own row,
    assert [hits[0].row for hits in search.search(search.stored_vectors(every), 1)] == every  # whatever order it was encoded in
    assert TrainingIndex(index, tmp_path / "gens", generation=1).size == 20  # a resumed run loads its generation
    search.drop_older(1)
    # Between checkpoints a refresh drops the generation before it, unless a checkpoint names that one.
    files = lambda: sorted(p.name for p in (tmp_path / "gens").iterdir())
    for _ in range(3):
        search.refresh(DualEncoder(tiny_encoder_path))
    assert files() == ["dense-1-0of1.faiss", "dense-4-0of1.faiss"]
    search.drop_older(4)
    assert files() == ["dense-4-0of1.faiss"]
    with pytest.raises(ValueError, match="retrieval is dense or hybrid"):
        search.search_many(queries, 5, "sparse", vectors)


def test_held_out_articles_never_train_and_are_the_dev_set(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """--held-out-share: the questions about a share of the articles are the dev set and never train; the rest train in
    the order a run with --dev trains them (so a ceiling probe and a joint run see the same questions); the joint
    bench measures the same held-out questions."""
    from bench.joint_training import held_out_sets

    qa = tmp_path / "qa.jsonl.gz"
    with gzip.open(qa, "wt") as out, gzip.open(qa_file, "rt") as topics:
        out.write(topics.read())
        out.writelines(json.dumps({"id": f"free{i}", "question": f"what else is {i}?", "answers": ["x"]}) + "\n" for i in range(3))
    index = Index.open(topic_index, readonly=True)
    held_config = config(topic_index, qa, tiny_reader_path, tmp_path / "run", held_out_share=0.25, steps=20, dev_eval=20)
    train, dev = run_records(held_config, 1, index)
    article = {g: index.document(g).title for r in train + dev for g in r.gold_ids}
    held = {article[g] for r in dev for g in r.gold_ids}
    assert len(held) == 5 and len(dev) == 5  # 20 questions about 20 articles, a quarter held out
    assert not {article[g] for r in train for g in r.gold_ids} & held
    assert len(train) == 18 and {r.id for r in train} >= {"free0", "free1", "free2"}  # no gold, no article: they train
    everything, _ = run_records(replace(held_config, held_out_share=0.0, dev=qa_file), 1, index)
    assert [r.id for r in train] == [r.id for r in everything if r.id not in {d.id for d in dev}]
    other_seed, other_dev = run_records(replace(held_config, seed=1), 1, index)
    assert {r.id for r in other_dev} == {r.id for r in dev} and [r.id for r in other_seed] != [r.id for r in train]  # --seed shuffles, the split stays
    assert {r.id for r in held_out_sets(index, 100, 0.25, files=[qa])["qa-held-out"]} == {r.id for r in dev}
    _, random_dev = run_records(replace(held_config, held_out_share=0.0), 1, index)
    assert len(random_dev) == 4  # without it, --dev-size questions
    with pytest.raises(ValueError, match="holds out no question"):
        run_records(replace(held_config, held_out_share=0.01), 1, index)


def test_passage_scores_use_the_stored_vectors_or_the_passage_side(topic_index: Path, tiny_encoder_path: str, tmp_path: Path) -> None:
    """Query-side scores read the index's vectors and send nothing to the passage side; both-sides scores embed the
    passages afresh (the same vectors while the encoder is unchanged) and are differentiable in its weights."""
    from rag.retriever import DualEncoder

    search = TrainingIndex(Index.open(topic_index, readonly=True), tmp_path / "gens")
    retriever = DualEncoder(tiny_encoder_path).eval()
    query = retriever(["topic3 alpha", "topic7 bravo"], "query").detach()  # only the passage side may carry a gradient
    found = search.search(query.numpy(), 4)
    stored = passage_scores(query, found, search, None)
    fresh = passage_scores(query, found, search, retriever)
    assert stored.shape == fresh.shape == (2, 4) and stored.dtype == fresh.dtype == torch.float32
    assert torch.allclose(stored, torch.tensor([[h.score for h in row] for row in found]), atol=1e-5)
    assert torch.allclose(fresh, stored, atol=1e-5)
    assert not stored.requires_grad
    # in-batch negatives: each query against both questions' passages, its own block where the plain scores are
    everyone = passage_scores(query, found, search, None, in_batch=True)
    assert everyone.shape == (2, 8)
    assert torch.allclose(everyone[0, :4], stored[0]) and torch.allclose(everyone[1, 4:], stored[1])
    other = torch.from_numpy(search.stored_vectors([h.row for h in found[1]])) @ query[0]
    assert torch.allclose(everyone[0, 4:], other, atol=1e-5)
    # a passage in both questions' candidates is hidden from each where it is the other's
    others = [h for h in search.search(query[1:].numpy(), 20)[0] if h.row not in {g.row for g in found[0]}]
    shared = [found[0], [*others[:3], found[0][2]]]
    scores = passage_scores(query, shared, search, None, in_batch=True)
    hidden = hide_own_elsewhere(scores, shared)
    assert hidden[0, 7] == hidden[1, 2] == -1e4 and (hidden == -1e4).sum() == 2
    assert torch.equal(hidden[0, :7], scores[0, :7]) and torch.equal(hidden[1, 3:], scores[1, 3:])
    fresh.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in retriever.parameters())


def test_rerank_keeps_the_best_candidates_by_the_current_passage_side(topic_index: Path, tiny_encoder_path: str,
                                                                     tmp_path: Path) -> None:
    """rerank:L orders a stale search's L candidates by the encoder as it is now, keeps the best, and leaves the encoder
    training (no dropout while it embeds them, no gradient kept)."""
    from rag.retriever import DualEncoder

    search = TrainingIndex(Index.open(topic_index, readonly=True), tmp_path / "gens")
    retriever = DualEncoder(tiny_encoder_path).eval()
    with torch.no_grad():
        query = retriever(["topic3 alpha"], "query")[0]
        stale = search.search(query[None].numpy(), 8)[0]
        unchanged = rerank(retriever, query, stale, 3)
        assert [h.row for h in unchanged] == [h.row for h in stale[:3]]  # the stored vectors are this encoder's
        torch.manual_seed(0)  # the same move whichever tests ran before
        for param in retriever.parameters():  # the passage side moves on, as training moves it
            param.add_(torch.randn_like(param) * 0.05)
    retriever.train()
    kept = rerank(retriever, query, stale, 3)
    assert retriever.training
    with evaluating(retriever):
        fresh = [float(v @ query) for v in torch.from_numpy(retriever.encode([encoder_input(h.title, h.text) for h in stale], "passage"))]
    best = sorted(range(len(stale)), key=lambda i: -fresh[i])[:3]
    assert [h.row for h in kept] == [stale[i].row for i in best]
    assert [h.row for h in kept] != [h.row for h in stale[:3]]  # the noise reorders them, so the test can tell

def test_scores_stay_float32_under_bf16_autocast(topic_index: Path, tiny_encoder_path: str, tmp_path: Path) -> None:
    """--bf16 autocasts the encoders, not the scores: s_k and rerank's order are those of float32 vectors, so close
    candidates do not tie at bf16's 8-bit rounding."""
    from rag.retriever import DualEncoder

    search = TrainingIndex(Index.open(topic_index, readonly=True), tmp_path / "gens")
    retriever = DualEncoder(tiny_encoder_path).eval()
    query = retriever(["topic3 alpha", "topic7 bravo"], "query").detach()
    found = search.search(query.numpy(), 8)
    exact = passage_scores(query, found, search, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = passage_scores(query, found, search, None)
        everyone = passage_scores(query, found, search, None, in_batch=True)
        kept = rerank(retriever, query[0], found[0], 8)
    assert autocast.dtype == torch.float32 and torch.allclose(autocast, exact, atol=1e-6)
    assert torch.allclose(everyone[1, 8:], exact[1], atol=1e-6)
    assert [h.row for h in kept] == [h.row for h in sorted(found[0], key=lambda h: -h.score)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vectors = retriever(["topic3 alpha"], "passage")
    assert vectors.dtype == torch.float32 and torch.allclose(vectors.norm(dim=-1), torch.ones(1), atol=1e-6)


def test_scores_and_reader_targets(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """Query-side scores are dot products with the index's vectors; the targets are the reader's own log-likelihoods,
    per passage or leaving one out; EMDR^2's retriever loss sends no gradient to the reader."""
    torch.manual_seed(0)
    trainer = JointTrainer(config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", query_side_only=True), Index.open(topic_index, readonly=True))
    query = trainer.retriever(["which topic is number 3?"], "query")
    found, scores = trainer.retrieve(["which topic is number 3?"], query, passage_side=False)
    vectors = trainer.search_index.stored_vectors([h.row for h in found[0]])
    assert scores.shape == (1, 3) and torch.allclose(scores, query.detach() @ torch.from_numpy(vectors).T, atol=1e-6)
    assert [h.score for h in found[0]] == pytest.approx(scores[0].tolist(), abs=1e-5)
    with torch.no_grad():
        targets = trainer.reader_logprobs(["q?"], found, ["topic3"], leave_one_out=False)
        leave_out = trainer.reader_logprobs(["q?"], found, ["topic3"], leave_one_out=True)
        direct = [trainer.reader.score("q?", [found[0][k]], "topic3").item() for k in range(3)]
        left = trainer.reader.score("q?", [found[0][0], found[0][2]], "topic3")  # one prompt: D minus d_2
    assert targets[0].tolist() == pytest.approx(direct, abs=1e-4)
    assert leave_out[0, 1].item() == pytest.approx(trainer.reader.answer_logprobs(
        [trainer.reader.prompt_ids("q?", [found[0][0], found[0][2]])], [trainer.reader.answer_ids("topic3")])[0].item(), abs=1e-4)
    assert left.shape == (2,)
    _, retriever_loss = trainer.losses([QARecord("q", "which topic is number 3?", ["topic3"])])
    retriever_loss.backward()
    assert all(p.grad is None for p in trainer.reader_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.retriever_params)


def test_candidates_beyond_the_top_k_feed_the_retriever_loss(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                              tmp_path: Path) -> None:
    """With --candidates 5 and --top-k 3 the reader reads the first 3 and the retriever's loss ranks all 5."""
    from trainer.joint_losses import emdr2_loss
    from trainer.reader_data import ReaderExample
    from trainer.reader_training import answer_nll

    torch.manual_seed(0)
    trainer = JointTrainer(config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", query_side_only=True, candidates=5),
                           Index.open(topic_index, readonly=True))
    record = QARecord("q", "which topic is number 3?", ["topic3"])
    with evaluating(trainer.reader.model, trainer.retriever), torch.no_grad():
        query = trainer.retriever([record.question], "query")
        found, scores = trainer.retrieve([record.question], query, passage_side=False)
        reader_nll, retriever_loss = trainer.losses([record])
        expected_nll = answer_nll(trainer.reader, [ReaderExample(record.question, list(found[0][:3]), "topic3", None)])
        expected_loss = emdr2_loss(scores, trainer.reader_logprobs([record.question], found, ["topic3"], False), trainer.config.tau)
    assert scores.shape == (1, 5) and len(found[0]) == 5
    assert reader_nll.item() == pytest.approx(expected_nll.item(), abs=1e-5)
    assert retriever_loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)


@pytest.mark.parametrize("loss", ["emdr2", "pdist", "loop", "rag"])
def test_in_batch_negatives_rank_each_question_among_the_whole_batchs_passages(loss: str, topic_index: Path, qa_file: Path,
                                                                               tiny_reader_path: str, tmp_path: Path) -> None:
    """--in-batch-negatives: each question's scores cover both questions' candidates, its target stays on its own
    (the reader's, as without the option) and the other question's passages only widen p_ret's softmax."""
    torch.manual_seed(0)
    trainer = JointTrainer(config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss=loss, in_batch_negatives=True),
                           Index.open(topic_index, readonly=True))
    records = [QARecord("a", "which topic is number 3?", ["topic3"]), QARecord("b", "which topic is number 7?", ["topic7"])]
    questions, answers = [r.question for r in records], [r.answers[0] for r in records]
    with evaluating(trainer.reader.model, trainer.retriever), torch.no_grad():
        query = trainer.retriever(questions, "query")
        found, scores = trainer.retrieve(questions, query, passage_side=True)
        reader = trainer.reader_logprobs(questions, found, answers, leave_one_out=loss == "loop").double()
        _, retriever_loss = trainer.losses(records)
    assert scores.shape == (2, 6)
    log_p = torch.log_softmax(scores.double() / trainer.config.tau, -1)
    own = torch.stack([log_p[0, :3], log_p[1, 3:]])  # each question's own passages, under the softmax over all six
    if loss in ("emdr2", "rag"):
        expected = -torch.logsumexp(own + reader, -1).mean()
    else:
        target = torch.softmax(-reader if loss == "loop" else reader, -1)
        expected = (target * (target.log() - own)).sum(-1).mean()
    assert retriever_loss.item() == pytest.approx(expected.item(), abs=1e-4)


def test_hybrid_candidates_fuse_the_dense_top_with_bm25s(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                         tiny_encoder: TextEncoder, tmp_path: Path) -> None:
    """--candidates-from hybrid: each question's candidates are the reciprocal rank fusion of its dense top-C and BM25's
    top-C, C of them, none twice, so BM25's best passage is there even where the dense side ranks it too low to see;
    the loss still scores them with the retriever. An index without BM25 is refused."""
    from indexer.fusion import reciprocal_rank_fusion
    from indexer.index import build_index

    index = Index.open(topic_index, readonly=True)
    trainer = JointTrainer(config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", query_side_only=True, candidates=4,
                                  candidates_from="hybrid"), index)
    questions = [f"topic{i}" for i in range(20)]
    with torch.no_grad():
        query = trainer.retriever(questions, "query")
        found, scores = trainer.retrieve(questions, query, passage_side=False)
    dense = trainer.search_index.search(query.numpy(), 4)
    bm25 = index.search_many(questions, 4, mode="sparse")
    assert any(best[0].row not in {h.row for h in row} for best, row in zip(bm25, dense))  # the dense side misses some
    for row, best, own in zip(found, bm25, dense):
        rows = [h.row for h in row]
        assert len(set(rows)) == 4 and best[0].row in rows
        assert rows == [r for r, _ in reciprocal_rank_fusion([[h.row for h in own], [h.row for h in best]], 4)]
    vectors = torch.from_numpy(trainer.search_index.stored_vectors([h.row for row in found for h in row])).view(20, 4, -1)
    assert torch.allclose(scores, torch.einsum("bd,bkd->bk", query, vectors), atol=1e-6)
    dense_only = tmp_path / "dense-only"
    build_index(dense_only, make_documents(6), tiny_encoder, sparse=False)
    with pytest.raises(ValueError, match="no sparse part"):
        JointTrainer(config(dense_only, qa_file, tiny_reader_path, tmp_path / "run2", candidates_from="hybrid"), Index.open(dense_only, readonly=True))
    with pytest.raises(ValueError, match="--candidates-from"):
        config(topic_index, qa_file, tiny_reader_path, tmp_path / "run3", candidates_from="bm25").check()


def test_query_side_training_moves_the_retriever_towards_the_reader(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                                    tmp_path: Path) -> None:
    """PDist on one question, reader nearly fixed: the retriever's KL to the reader's targets falls."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "q0", "question": "which topic is number 0?", "answers": ["topic0"]}) + "\n")
    run = config(topic_index, one, tiny_reader_path, tmp_path / "run", loss="pdist", query_side_only=True, steps=12, batch_size=1,
                 dev_size=0, lr=1e-7, retriever_lr=1e-2, warmup=0.0, save_every=0, tau=0.05)
    train_joint(run, progress=False)
    losses = [json.loads(line)["retriever_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and losses[-1] < losses[0] / 2


def test_reader_first_holds_the_retriever_until_its_steps_are_done(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                                    tmp_path: Path) -> None:
    """--reader-first 2 of 4 steps: the reader trains from the start, the retriever (loss and weights) from step 3 on."""
    from rag.retriever import DualEncoder

    run = config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss="pdist", query_side_only=True, candidates=5,
                 reader_first=2, warmup=0.0, retriever_lr=1e-3)
    initial = DualEncoder(str(Index.open(topic_index, readonly=True).manifest.encoder)).state_dict()
    assert train_joint(run, progress=False, stop_after=2) == {"stopped_at": 2}
    held = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert all(torch.equal(held["retriever"][n], initial[n]) for n in initial)
    assert held["optimizer"]["param_groups"][1]["lr"] == 1e-3  # the retriever's schedule starts at full rate (no warm-up)
    train_joint(run, resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["retriever_loss"] == 0 for r in rows] == [True, True, False, False]
    assert all(r["reader_nll"] > 0 for r in rows)
    trained = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert any(not torch.equal(trained["retriever"][n], initial[n]) for n in initial)
    assert any(not torch.equal(held["reader"][n], trained["reader"][n]) for n in held["reader"])


def test_a_trained_reader_adapter_trains_on(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """--adapter: the reader starts as the given LoRA, trains it on, resumes with it and exports it over the same base reader."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    first = config(topic_index, qa_file, tiny_reader_path, tmp_path / "first", loss="pdist", query_side_only=True, steps=2, lr=1e-2)
    train_joint(first, progress=False)
    adapter = tmp_path / "first" / "export" / "reader"
    start = load_file(adapter / "adapter_model.safetensors")
    run = config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss="pdist", query_side_only=True, adapter=adapter, lr=1e-2)
    trainer = JointTrainer(run, Index.open(topic_index, readonly=True))
    loaded = get_peft_model_state_dict(trainer.reader.model)
    assert loaded.keys() == start.keys() and all(torch.equal(loaded[n], start[n]) for n in start)
    assert {id(p) for p in trainer.reader_params} == {id(p) for n, p in trainer.reader.model.named_parameters() if "lora_" in n}
    assert train_joint(run, progress=False, stop_after=2) == {"stopped_at": 2}
    record = train_joint(run, resume=True, progress=False)  # the saved config names the adapter; the checkpoint's LoRA wins
    assert record["config"]["adapter"] == str(adapter) and record["steps"] == 4
    trained = load_file(tmp_path / "run" / "export" / "reader" / "adapter_model.safetensors")
    assert trained.keys() == start.keys() and any(not torch.equal(trained[n], start[n]) for n in start)
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (ia3 / "adapter_model.safetensors").touch()  # refused by its kind, before its weights are read
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    untyped = tmp_path / "untyped"
    untyped.mkdir()
    (untyped / "adapter_config.json").write_text("{}")
    for changes, message in [(dict(adapter=tmp_path / "none"), "no such folder"), (dict(adapter=topic_index), "not a peft adapter"),
                             (dict(adapter=ia3), "is a IA3 adapter"), (dict(adapter=broken), "unreadable adapter_config.json"),
                             (dict(adapter=untyped), "adapter_config.json names no peft_type"), (dict(adapter=adapter, method="full"), "drop --method full")]:
        with pytest.raises(ValueError, match=message):
            config(topic_index, qa_file, tiny_reader_path, tmp_path / "bad", **changes).check()
    # A LoRA trained over another base model (here narrower) is refused when the reader loads, not mid-training.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, LlamaForCausalLM

    narrow = AutoConfig.from_pretrained(tiny_reader_path)
    narrow.hidden_size, narrow.intermediate_size = 32, 64
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM(narrow), lora).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="does not fit reader"):
        JointTrainer(replace(run, adapter=tmp_path / "narrow", out=tmp_path / "bad"), Index.open(topic_index, readonly=True))


def test_adist_distils_the_fid_readers_cross_attention(topic_index: Path, qa_file: Path, tiny_fid_reader_path: str, tiny_reader_path: str,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--loss adist with a FiD reader: the reader's NLL and the retriever's target come from one reading pass over the top-K;
    the retriever's KL to that attention falls; the run exports a LoRA over the T5 that `rag-serve ask` loads; adist
    refuses a decoder-only reader and candidates it does not read."""
    from trainer.joint_losses import adist_loss

    torch.manual_seed(0)
    run = config(topic_index, qa_file, tiny_fid_reader_path, tmp_path / "run", loss="adist", query_side_only=True)
    trainer = JointTrainer(run, Index.open(topic_index, readonly=True))
    record = QARecord("q", "which topic is number 3?", ["topic3"])
    with evaluating(trainer.reader.model, trainer.retriever):  # no LoRA dropout: both passes alike
        query = trainer.retriever([record.question], "query")
        found, scores = trainer.retrieve([record.question], query, passage_side=False)
        logprobs, lengths, mass = trainer.reader.read_with_attention([record.question], [found[0]], ["topic3"])
        reader_nll, retriever_loss = trainer.losses([record])
    assert reader_nll.item() == pytest.approx((-logprobs.sum() / lengths.sum()).item(), abs=1e-5)
    assert retriever_loss.item() == pytest.approx(adist_loss(scores, mass, run.tau).item(), abs=1e-5)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "q0", "question": "which topic is number 0?", "answers": ["topic0"]}) + "\n")
    learn = replace(run, train=[one], out=tmp_path / "learn", steps=12, batch_size=1, dev_size=0, lr=1e-7, retriever_lr=1e-2, warmup=0.0,
                    save_every=0)
    train_joint(learn, progress=False)
    losses = [json.loads(line)["retriever_loss"] for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and losses[-1] < losses[0] / 2
    assert serve_main(["ask", "--index", str(topic_index), "--reader", tiny_fid_reader_path, "--adapter", str(tmp_path / "learn" / "export" / "reader"),
                       "--query-encoder", str(tmp_path / "learn" / "export" / "encoder"), "--k", "3", "--mode", "dense", "--scope", "none",
                       "--device", "cpu", "--json", "which topic is number 0?"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["passages"]) == 3
    for changes, message in [(dict(reader=tiny_reader_path), "is decoder-only"), (dict(candidates=5), "drop --candidates")]:
        with pytest.raises(ValueError, match=message):
            replace(run, **changes).check()


@pytest.mark.parametrize("refresh,expected", [("rerank:5", [0, 0, 0, 0, 10]), ("every:1", [0, 0, 0, 20, 20])])
def test_no_refresh_until_the_encoder_has_moved(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path,
                                               refresh: str, expected: list[int]) -> None:
    """Until an optimizer step changes the encoder its passage vectors are the stored ones: nothing is re-embedded."""
    run = config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss="pdist", refresh=refresh, reader_first=2, steps=5)
    train_joint(run, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Steps 1-2 are --reader-first's, step 3 the first of the retriever's warm-up, at learning rate 0; step 4's update
    # moves it, so every:1 re-embeds all 20 passages after step 4 (none after the last) and rerank:5 step 5's
    # batch x L = 2 x 5 candidates.
    assert [r["refresh_passages_total"] for r in rows] == expected


def test_metrics_log_the_learning_rate_each_step_used(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """Step 1 warms up from 0 (one warm-up step of 5), then the rate falls linearly: the row of a step says its own."""
    run = config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss="pdist", steps=5, lr=1e-3)
    train_joint(run, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "reader_nll" in line]
    assert [r["lr"] for r in rows] == pytest.approx([0.0, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


@pytest.mark.parametrize("loss,refresh", [("emdr2", "every:2"), ("loop", "rerank:5")])
def test_resume_continues_exactly(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path, loss: str, refresh: str) -> None:
    """4 steps straight == 2 steps, stop, resume, 2 steps: the same losses, weights, optimizer and index generation,
    even when the stopped run was killed half-way through a line of its metrics log."""
    straight = config(topic_index, qa_file, tiny_reader_path, tmp_path / "straight", loss=loss, refresh=refresh, grad_accum=2)
    train_joint(straight, progress=False)
    stopped = replace(straight, out=tmp_path / "resumed")
    assert train_joint(stopped, progress=False, stop_after=2) == {"stopped_at": 2}
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as log:  # killed as it wrote step 3's line
        log.write('{"step": 3, "reader_nl')
    record = train_joint(stopped, resume=True, progress=False)
    assert record["steps"] == 4
    lines = [(tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("straight", "resumed")]
    timed = lambda key: "second" in key or key in ("refresh", "peak_memory_mib")
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if not timed(k)} for r in rows]
    assert strip(lines[0]) == strip(lines[1]) and len(lines[0]) == 4
    a, b = (torch.load(tmp_path / name / CHECKPOINT, weights_only=False) for name in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4 and a["cursor"] == b["cursor"] and a["generation"] == b["generation"]
    for part in ("reader", "retriever"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][n], b[part][n]) for n in a[part])
    assert all(torch.equal(x, y) for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
               for x, y in zip(s.values(), t.values()))
    if refresh.startswith("every"):
        assert a["generation"] == 1 and json.loads(lines[1][1])["refresh"]["generation"] == 1
        assert json.loads(lines[1][1])["refresh"]["passages_per_second"] > 0
    assert json.loads(lines[1][-1])["refresh_seconds_total"] > json.loads(lines[1][0])["refresh_seconds_total"] >= 0  # timed, and carried over
    # Re-embedded: the whole index (20 passages) at step 2, or each step's grad-accum x batch x L = 2 x 2 x 5 candidates
    # from step 3 on (step 1 of the warm-up has learning rate 0, so the encoder first moves at step 2).
    expected = [0, 20, 20, 20] if refresh.startswith("every") else [0, 0, 20, 40]
    assert [json.loads(r)["refresh_passages_total"] for r in lines[1]] == expected
    speed = json.loads((tmp_path / "resumed" / "training.json").read_text())["speed"]
    assert speed["refresh_passages_per_second"] > 0


def test_a_finished_run_resumed_keeps_its_final_evaluation(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    run = config(topic_index, qa_file, tiny_reader_path, tmp_path / "run", loss="pdist", steps=2, dev_eval=2)
    first = train_joint(run, progress=False)
    again = train_joint(run, resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("final")) for r in rows) == 1 and again["dev_after"] == first["dev_after"] and again["steps"] == 2


def test_resume_refuses_an_index_that_changed_since(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path) -> None:
    """The run's passages and re-embedded vectors are those of the index it stopped with: after an upsert or a delete
    a resume would search rows that are gone, so it is refused by name."""
    index_copy = tmp_path / "idx"
    shutil.copytree(topic_index, index_copy)
    run = config(index_copy, qa_file, tiny_reader_path, tmp_path / "run", loss="emdr2", refresh="every:1")
    assert train_joint(run, progress=False, stop_after=2) == {"stopped_at": 2}
    with Index.open(index_copy) as index:
        doc_id = next(index.store.iter_passages(index.generation)).doc_id
        index.delete([doc_id])
    with pytest.raises(ValueError, match=r"changed since the run stopped \(generation 1 then, 2 now\)"):
        train_joint(run, resume=True, progress=False)


def test_cli_run_exports_an_encoder_and_a_reader_that_load(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`rag-train joint` with dev evaluation and bf16 autocast on the CPU; `rag-index build --encoder export/encoder` and `rag-serve ask --adapter export/reader` take the outputs."""
    run = tmp_path / "run"
    code = main_train(["joint", "--index", str(topic_index), "--train", str(qa_file), "--loss", "rag", "--top-k", "2", "--candidates", "3",
                       "--reader", tiny_reader_path, "--steps", "2", "--batch-size", "2", "--dev-size", "4", "--dev-eval", "4",
                       "--eval-every", "1", "--gradient-checkpointing", "--bf16", "--device", "cpu", "--threads", "1", "--out", str(run)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["dev_before"]["n"] == 4 and summary["dev_after"]["recall@5"] is not None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "dev" in r] == [0, 1, 2]
    record = json.loads((run / "training.json").read_text())
    speed = record["speed"]  # what a GPU run reports: step time, reader tokens/s, peak memory
    assert speed["median_step_seconds"] > 0 and speed["median_reader_tokens_per_second"] > 0 and speed["peak_memory_mib"] > 0
    assert record["config"]["loss"] == "rag" and record["command"] and record["export"]["base_reader"] == tiny_reader_path
    from rag.retriever import DualEncoder

    trained = DualEncoder(record["export"]["base_encoder"])
    trained.load_state_dict(torch.load(run / CHECKPOINT, weights_only=False)["retriever"])
    texts = ["Title 1\ntopic1 alpha", "which topic is number 1?"]
    assert np.allclose(TextEncoder(str(run / "export" / "encoder"))(texts), trained.eval().encode(texts, "passage"), atol=1e-6)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in make_documents(5)))
    assert index_main(["build", "--out", str(tmp_path / "idx2"), "--corpus", str(corpus), "--encoder", str(run / "export" / "encoder"),
                       "--device", "cpu"]) == 0
    capsys.readouterr()
    assert serve_main(["ask", "--index", str(tmp_path / "idx2"), "--reader", tiny_reader_path, "--adapter", str(run / "export" / "reader"),
                       "--k", "2", "--mode", "dense", "--scope", "none", "--device", "cpu", "which topic is number 1?"]) == 0
    # Query-side training is served as trained: the original index, questions embedded by the exported encoder.
    assert serve_main(["ask", "--index", str(topic_index), "--reader", tiny_reader_path, "--adapter", str(run / "export" / "reader"),
                       "--query-encoder", str(run / "export" / "encoder"), "--k", "2", "--mode", "dense", "--scope", "none",
                       "--device", "cpu", "--json", "which topic is number 1?"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["passages"]) == 2
    # Finished runs refuse a second --out into the same folder; --resume of a finished run only re-exports.
    assert main_train(["joint", "--index", str(topic_index), "--train", str(qa_file), "--reader", tiny_reader_path, "--out", str(run)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main_train(["joint", "--resume", str(run)]) == 0


def test_resume_continues_in_the_folder_named_from_any_working_directory(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A run started with relative paths, stopped, copied elsewhere and resumed from another working directory goes on in
    the copy (the original stays as it was stopped); options given beside --resume that differ from the run's are refused,
    naming each, while the same values are accepted."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    relative = lambda path: Path(os.path.relpath(path, work))
    started = config(relative(topic_index), relative(qa_file), tiny_reader_path, Path("run"), steps=3, save_every=1)
    assert train_joint(started, progress=False, stop_after=2) == {"stopped_at": 2}
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["index"] == str(topic_index.resolve()) and saved["train"] == [str(qa_file.resolve())]
    assert saved["out"] == str((work / "run").resolve())
    original = {p.name: p.read_bytes() for p in (work / "run").iterdir() if p.is_file()}
    copy = tmp_path / "moved" / "run"
    shutil.copytree(work / "run", copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main_train(["joint", "--resume", str(copy), "--steps", "5", "--loss", "pdist", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "--steps 5 (the run's: 3)" in err and "--loss pdist (the run's: emdr2)" in err and "--out" in err
    assert not (tmp_path / "other").exists()
    assert main_train(["joint", "--resume", str(copy), "--steps", "3", "--index", str(topic_index)]) == 0  # as saved: fine
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert (copy / "export" / "reader").is_dir() and json.loads((copy / "config.json").read_text())["out"] == str(copy.resolve())
    assert {p.name: p.read_bytes() for p in (work / "run").iterdir() if p.is_file()} == original
    assert not (work / "run" / "export").exists()


@pytest.mark.parametrize("argv, message", [
    (["--index", "/nonexistent"], "/nonexistent"),
    (["--top-k", "25"], "the index has only 20 passages"),
    (["--held-out-share", "0.01"], "holds out no question"),
    (["--held-out-share", "0.99"], "holds out every training question"),
    (["--train", ","], "--train needs at least one QA file"),
])
def test_a_failed_start_leaves_out_as_it_was(argv: list[str], message: str, topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Nothing is written into --out before the index, the records and the trainer have loaded: the command can be run
    again once fixed, into a new folder or an empty one that was there before."""
    base = {"--index": str(topic_index), "--train": str(qa_file), "--reader": tiny_reader_path, "--top-k": "3", "--steps": "1",
            "--batch-size": "1", "--dev-size": "4", "--dev-eval": "0", "--device": "cpu", "--threads": "1"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    argv = [x for kv in base.items() for x in kv]
    assert main_train(["joint", *argv, "--out", str(tmp_path / "new")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert main_train(["joint", *argv, "--out", str(tmp_path / "empty")]) == 2
    assert not any((tmp_path / "empty").iterdir())


def test_a_stopped_run_keeps_its_folder_only_once_it_has_a_checkpoint(topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C (or SIGTERM) before the first checkpoint leaves no folder, so the same command runs again; after it, the
    folder stays for --resume, which finishes the run."""
    run = tmp_path / "run"
    argv = ["joint", "--index", str(topic_index), "--train", str(qa_file), "--reader", tiny_reader_path, "--top-k", "2", "--steps", "3",
            "--batch-size", "1", "--save-every", "2", "--dev-size", "4", "--dev-eval", "0", "--device", "cpu", "--threads", "1",
            "--out", str(run)]
    step = JointTrainer.step

    def ctrl_c_at(n: int) -> Callable[..., Any]:
        calls = []

        def stepped(self: JointTrainer, micro: Any) -> Any:
            calls.append(micro)
            if len(calls) == n:
                raise KeyboardInterrupt
            return step(self, micro)
        return stepped

    with monkeypatch.context() as patch:
        patch.setattr(JointTrainer, "step", ctrl_c_at(2))
        assert main_train(argv) == 130
        # The progress bar is closed first: the last lines say what happened.
        assert capsys.readouterr().err.endswith(f"rag-train: interrupted\nrag-train: the unfinished run's files are removed from {run}\n")
        assert not run.exists()
        patch.setattr(JointTrainer, "step", ctrl_c_at(3))
        assert main_train(argv) == 130
    assert f"the last checkpoint is kept in {run / CHECKPOINT}: `rag-train joint --resume {run}` carries on from it" in capsys.readouterr().err
    assert torch.load(run / CHECKPOINT, weights_only=False)["step"] == 2
    with run_lock(run):  # a run still writing there: a resume is refused, its files untouched
        assert main_train(["joint", "--resume", str(run)]) == 2
    assert f"another run is writing in {run}" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        patch.setattr(JointTrainer, "step", ctrl_c_at(1))
        assert main_train(["joint", "--resume", str(run)]) == 130
    assert capsys.readouterr().err.endswith(f"the last checkpoint is kept in {run / CHECKPOINT}: `rag-train joint --resume {run}` "
                                            "carries on from it\n")
    assert main_train(["joint", "--resume", str(run)]) == 0 and (run / "export" / "encoder").is_dir()


def test_out_must_be_a_folder(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("mine")
    assert main_train(["joint", "--index", str(topic_index), "--train", str(qa_file), "--reader", tiny_reader_path,
                       "--out", str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_torchrun_two_cpu_processes_shard_the_index(topic_index: Path, qa_file: Path, tiny_reader_path: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """`torchrun --nproc-per-node 2` (gloo): each rank holds and re-embeds half the index; rank 0 writes the run."""
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "trainer.joint_training", "--index", str(topic_index), "--train", str(qa_file), "--loss", "pdist",
                           "--refresh", "every:1", "--top-k", "3", "--reader", tiny_reader_path, "--steps", "4", "--batch-size", "1", "--reader-first", "1",
                           "--dev-size", "4", "--dev-eval", "2", "--device", "cpu", "--threads", "1", "--out", str(run)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["export"]["encoder"] == str(run / "export" / "encoder")  # one result, rank 0's
    record = json.loads((run / "training.json").read_text())
    # One re-embedding, after step 3: step 1 is --reader-first's, step 2 warms the retriever up from learning rate 0,
    # and none follows the last.
    assert record["processes"] == 2 and record["steps"] == 4 and record["generation"] == 1 and record["dev_after"]["n"] == 2
    assert sorted(p.name for p in (run / "index").iterdir()) == ["dense-1-0of2.faiss", "dense-1-1of2.faiss"]
    from indexer.dense import DenseIndex

    shards = [DenseIndex.load(run / "index" / f"dense-1-{r}of2.faiss", "flat").ntotal for r in (0, 1)]
    assert sum(shards) == 20 and min(shards) > 0
    checkpoint = torch.load(run / CHECKPOINT, weights_only=False)
    assert checkpoint["world_size"] == 2
    # The retriever's optimizer state starts at the step it is first taught, as on one process (--reader-first 1 of 4).
    steps = lambda group: {int(checkpoint["optimizer"]["state"][i]["step"]) for i in checkpoint["optimizer"]["param_groups"][group]["params"]}
    assert steps(0) == {4} and steps(1) == {3}
    assert (run / "export" / "reader" / "adapter_config.json").is_file()
    # Resumed once finished, every rank keeps the final evaluation rank 0 read (one rank evaluating alone would hang).
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "trainer.joint_training", "--resume", str(run)],
                           env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("final")) for r in rows) == 1
    # One process cannot take the two ranks' shards of the re-embedded index: said before anything loads.
    assert main_train(["joint", "--resume", str(run)]) == 2
    assert "written by 2 processes: resume with as many, not 1" in capsys.readouterr().err


@pytest.mark.parametrize("lrs, message", [
    (["--lr", "1e30"], "training diverged at step 2: the loss is nan, its gradient norm nan; try a lower --lr or --retriever-lr"),
    (["--retriever-lr", "1e30"], "training diverged at step 2: the query vectors are not finite numbers; try a lower --retriever-lr"),
])
def test_a_run_that_diverges_stops_with_exit_2(lrs: list[str], message: str, topic_index: Path, qa_file: Path, tiny_reader_path: str,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A learning rate far too high: the run stops at the first loss or query vector that is not finite, exports no
    NaN models, and keeps no folder (it had no checkpoint yet)."""
    run = tmp_path / "run"
    assert main_train(["joint", "--index", str(topic_index), "--train", str(qa_file), "--reader", tiny_reader_path, "--top-k", "2",
                       "--steps", "4", "--batch-size", "1", "--warmup", "0", *lrs, "--dev-size", "4", "--dev-eval", "0",
                       "--device", "cpu", "--threads", "1", "--out", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_a_run_that_diverges_after_a_checkpoint_says_a_resume_would_diverge_again(topic_index: Path, qa_file: Path,
                                                                                  tiny_reader_path: str, tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    """A resume is exact: it would repeat the learning rates that diverged, so the note does not offer it."""
    run = tmp_path / "run"
    assert main_train(["joint", "--index", str(topic_index), "--train", str(qa_file), "--reader", tiny_reader_path, "--top-k", "2",
                       "--steps", "4", "--batch-size", "1", "--warmup", "0", "--lr", "1e30", "--save-every", "1", "--dev-size", "4",
                       "--dev-eval", "0", "--device", "cpu", "--threads", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 2" in err and "--resume` repeats the learning rates that diverged" in err
    assert "carries on from it" not in err and (run / CHECKPOINT).is_file()
