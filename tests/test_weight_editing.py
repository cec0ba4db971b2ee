"""FT-L weight editing (bench/weight_editing.py) on a tiny random Llama: the edit raises log p(target), stays
within its norm constraint, and restoring gives back the original weights bit for bit."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.weight_editing import FTConfig, accumulation, edited_weight, ft_edit, restore, single_edits, snapshot
from rag.reader import DecoderReader
from trainer.edit_cases import EditCase, Probe

QUESTION, TARGET = "What is the capital of Norway?", "Bergen"


@pytest.fixture(scope="module")
def reader(tiny_reader_path: str, tmp_path_factory: pytest.TempPathFactory) -> DecoderReader:
    """conftest's tiny Llama reader (SmolLM2's tokenizer and chat template) narrowed to 32-d, 2 layers."""
    folder = tmp_path_factory.mktemp("tiny-edit-reader")
    config = LlamaConfig.from_pretrained(tiny_reader_path)
    config.hidden_size, config.intermediate_size, config.head_dim = 32, 64, 8
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_reader_path).save_pretrained(folder)
    return DecoderReader(str(folder), device="cpu", max_new_tokens=2)


def nll(reader: DecoderReader, question: str, target: str) -> float:
    """Mean NLL per answer token through the reader's own scoring path (not the edit's)."""
    with torch.no_grad():
        logprob, length = reader.answer_logprobs([reader.prompt_ids(question, [])], [reader.answer_ids(target)])
    return -(logprob / length).item()


def state(reader: DecoderReader) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in reader.model.state_dict().items()}


def test_edit_raises_target_logprob_and_restore_is_exact(reader: DecoderReader) -> None:
    config = FTConfig(layer=1, steps=10, lr=1e-2, norm_constraint=0)
    original = state(reader)
    saved = snapshot(reader, config.layer)
    before = nll(reader, QUESTION, TARGET)
    stats = ft_edit(reader, QUESTION, TARGET, config)
    after = nll(reader, QUESTION, TARGET)
    assert after < before - 0.1
    assert stats["steps"] == 10
    assert stats["loss_before"] == pytest.approx(before, abs=1e-4)
    assert stats["loss_after"] == pytest.approx(after, abs=1e-4)
    changed = [k for k, v in reader.model.state_dict().items() if not torch.equal(v, original[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]
    restore(reader, config.layer, saved)
    assert all(torch.equal(v, original[k]) for k, v in reader.model.state_dict().items())
    assert nll(reader, QUESTION, TARGET) == before
    assert all(p.requires_grad for p in reader.model.parameters())  # flags given back


def test_prompt_last_objective_scores_answer_tokens_at_the_prompt_end(reader: DecoderReader) -> None:
    prompt, answer = reader.prompt_ids(QUESTION, []), reader.answer_ids(TARGET)[:-1]
    with torch.no_grad():
        logprobs = torch.log_softmax(reader.model(torch.tensor([prompt])).logits[0, -1], -1)
    expected = -logprobs[answer].mean().item()
    saved = snapshot(reader, 1)
    stats = ft_edit(reader, QUESTION, TARGET, FTConfig(layer=1, steps=5, lr=1e-2, objective="prompt_last"))
    restore(reader, 1, saved)
    assert stats["loss_before"] == pytest.approx(expected, abs=1e-4)
    assert stats["loss_after"] < stats["loss_before"]


def test_norm_constraint_bounds_every_entry(reader: DecoderReader) -> None:
    config = FTConfig(layer=0, steps=5, lr=1e-2, norm_constraint=1e-3)
    saved = snapshot(reader, config.layer)
    ft_edit(reader, QUESTION, TARGET, config)
    change = (edited_weight(reader.model, config.layer).detach() - saved).abs().max().item()
    restore(reader, config.layer, saved)
    assert 0 < change <= 1e-3 + 1e-7


def test_early_stop_when_loss_is_already_low(reader: DecoderReader) -> None:
    saved = snapshot(reader, 1)
    stats = ft_edit(reader, QUESTION, TARGET, FTConfig(layer=1, steps=5, stop_loss=1e9))
    assert stats["steps"] == 0 and torch.equal(edited_weight(reader.model, 1).detach(), saved)


def test_bad_layer_is_rejected(reader: DecoderReader) -> None:
    with pytest.raises(ValueError, match="out of range"):
        edited_weight(reader.model, 2)


CASES = [EditCase("a", QUESTION, TARGET, paraphrases=["Norway's capital?"], neighbors=[Probe("Capital of Peru?", "Lima")]),
         EditCase("b", "Who wrote Hamlet?", "Ibsen", neighbors=[Probe("Who wrote Faust?", "Goethe"), Probe("2+2?", "4")],
                  portability=Probe("Hamlet's author was born in?", "Skien"))]


def test_single_edit_regime_restores_and_scores(reader: DecoderReader) -> None:
    original = state(reader)
    result = single_edits(reader, CASES, FTConfig(layer=1, steps=2, lr=1e-2))
    assert all(torch.equal(v, original[k]) for k, v in reader.model.state_dict().items())
    assert result["question_counts"] == {"reliability": 2, "generality": 1, "locality": 3, "portability": 1,
                                         "reliability_before": 2, "generality_before": 1}
    assert all(v is None or 0 <= v <= 1 for v in result["metrics"].values())
    assert result["time_per_edit"]["n"] == 2 and len(result["cases"]) == 2


def test_accumulation_measures_checkpoints_then_restores(reader: DecoderReader) -> None:
    original = state(reader)
    result = accumulation(reader, CASES, [1, 2, 100], FTConfig(layer=1, steps=1, lr=1e-2))
    assert all(torch.equal(v, original[k]) for k, v in reader.model.state_dict().items())
    assert [p["edits"] for p in result["checkpoints"]] == [1, 2]
    assert result["n_neighbor_questions"] == 3 and result["time_per_edit"]["n"] == 2
    assert result["checkpoints"][1]["weight_change_max_abs"] > 0
