"""Fusion-in-Decoder reader (Izacard & Grave): an encoder-decoder model (T5, BART...) reads many passages at once.

Each (question, passage) pair is encoded alone, as "question: Q title: T context: C"; the encoder outputs of a
question's passages are concatenated, and one decoder attends over all of them while it writes the answer. The
encoder's cost grows linearly with the number of passages, not quadratically as one long prompt's would, and the
decoder's cross-attention says how much each passage was read: the target of attention distillation (`adist`).

`read_with_attention` gives, in the same pass as the answer's log-likelihood, each passage's share of the
cross-attention, averaged over layers, heads and answer tokens (ARCHITECTURE.md). No seq2seq weights can be had
offline here, so the tests build tiny random T5 models; give `--reader` the folder of any T5 or BART checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import BaseModelOutput

from rag.adapters import load_merged
from rag.reader import AnswerScorer, DecoderReader, PassageText, load_pretrained, pick_device


def is_fid_reader(name_or_path: str | Path) -> bool:
    """Whether `name_or_path` is a folder of an encoder-decoder model, which only the FiD reader reads. Names that are
    not folders (the default SmolLM2, hub names) are causal LMs for `DecoderReader`, which says what is wrong with them."""
    config_file = Path(name_or_path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        return bool(json.loads(config_file.read_text()).get("is_encoder_decoder", False))
    except (OSError, ValueError):
        return False  # the causal LM loader reports the unreadable config


def load_generative_reader(name_or_path: str, **settings: Any) -> GenerativeReader:
    """A reader that writes answers: the FiD reader for a folder of an encoder-decoder model, else the decoder reader."""
    return (FiDReader if is_fid_reader(name_or_path) else DecoderReader)(name_or_path, **settings)


class FiDReader(AnswerScorer):
    """An encoder-decoder model reading each passage with the question, fused in its decoder. `max_passage_tokens`
    bounds each encoder input: question, title and passage together."""

    default_k = 10  # FiD's encoder reads each passage alone: more passages cost linearly

    def __init__(
        self,
        name_or_path: str,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 24,
        max_passage_tokens: int = 192,
    ) -> None:
        path = str(name_or_path)
        self.device = pick_device(device)
        try:
            # Eager attention: the only implementation that returns the cross-attention weights adist reads.
            self.tokenizer, self.model = load_pretrained(path, AutoModelForSeq2SeqLM, self.device, dtype, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot load FiD reader {name_or_path!r}: {exc}") from exc
        if self.model.config.decoder_start_token_id is None:
            raise RuntimeError(f"reader {name_or_path!r} has no decoder_start_token_id in its config: its decoder cannot start")
        self.name = path
        self.adapter = str(adapter) if adapter else None
        if adapter:
            self.model = load_merged(self.model, adapter)
        self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.max_passage_tokens = max_passage_tokens
        self.eos_id = self.model.config.eos_token_id if self.model.config.eos_token_id is not None else self.tokenizer.eos_token_id

    # -- inputs ----------------------------------------------------------------------------------

    def encoder_texts(self, question: str, passages: Sequence[PassageText]) -> list[str]:
        """One encoder input per passage; a question without passages (closed book) is one input of its own."""
        asked = f"question: {question.strip()}"
        return [f"{asked} title: {p.title} context: {p.text}" for p in passages] or [asked]

    def encode(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The fused encoder states (B, K*L, d) and their mask (B, K*L), and K: each pair encoded alone (L tokens
        at most `max_passage_tokens`), a question's K slots side by side; a question with fewer passages than the
        batch's most has its spare slots masked out."""
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions but {len(passages)} passage lists")
        texts = [self.encoder_texts(q, p) for q, p in zip(questions, passages)]
        flat = [t for row in texts for t in row]
        batch = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_passage_tokens, return_tensors="pt").to(self.device)
        states = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        slots, width = max(len(row) for row in texts), states.shape[1]
        fused, masks, start = [], [], 0
        for row in texts:
            n, spare = len(row), slots - len(row)
            fused.append(torch.cat([states[start : start + n].reshape(n * width, -1), states.new_zeros(spare * width, states.shape[-1])]))
            masks.append(torch.cat([batch["attention_mask"][start : start + n].reshape(-1), batch["attention_mask"].new_zeros(spare * width)]))
            start += n
        return torch.stack(fused), torch.stack(masks), slots

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as the decoder should write it, ending with end of sequence."""
        ids = self.tokenizer(text_target=answer.strip())["input_ids"]
        return ids if ids and ids[-1] == self.eos_id else ids + [self.eos_id]

    # -- answering -------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[str]:
        """Greedy short answers, one per question, each from its own list of passages (empty list: closed book)."""
        if not questions:
            return []
        states, mask, _ = self.encode(questions, passages)
        out = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                                  do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [text.split("\n", 1)[0].strip() for text in texts]

    def read_logprobs(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]],
                      answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(answer | question, its passages) per row, all passages fused as `generate` reads them, and each
        answer's length in tokens; differentiable, one batched pass."""
        logprobs, lengths, _ = self._read(questions, passages, answers, attention=False)
        return logprobs, lengths

    def read_with_attention(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]],
                            answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`read_logprobs` and, from the same pass, each passage's cross-attention mass (B, K): the attention the
        decoder's answer tokens pay to the passage's encoder states, averaged over layers, heads and answer tokens.
        A row sums to 1 over its passages; spare slots get 0. In training mode the weights are those after
        attention dropout, as the decoder used them (an unbiased sample of the mass)."""
        logprobs, lengths, mass = self._read(questions, passages, answers, attention=True)
        assert mass is not None
        return logprobs, lengths, mass

    def _read(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]], answers: Sequence[str],
              attention: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if len(answers) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        states, mask, slots = self.encode(questions, passages)
        targets = [self.answer_ids(a) for a in answers]
        longest = max(len(t) for t in targets)
        labels = torch.full((len(targets), longest), -100, dtype=torch.long)
        for i, target in enumerate(targets):
            labels[i, : len(target)] = torch.tensor(target)
        labels = labels.to(self.device)
        # Decoder inputs, not labels: with labels the model would also compute a loss that is never used.
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                         decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=labels), output_attentions=attention)
        in_answer = labels != -100
        logprobs = torch.log_softmax(out.logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        summed, lengths = (logprobs * in_answer).sum(-1), in_answer.sum(-1)
        if not attention:
            return summed, lengths, None
        # (layers, B, heads, T, K*L) -> mean over layers and heads -> each slot's sum over its L states -> (B, T, K).
        weights = torch.stack(out.cross_attentions).float().mean(dim=(0, 2))
        per_slot = weights.view(weights.shape[0], weights.shape[1], slots, -1).sum(-1)
        mass = (per_slot * in_answer.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1)
        return summed, lengths, mass


GenerativeReader = DecoderReader | FiDReader  # the readers that write answers and train: `read_logprobs` scores them
