"""Decoder-only reader: answer a question from retrieved passages with a causal LM's chat template.

`generate` answers a batch of questions greedily and stops at the first newline or end of turn, so
answers stay short. `score` returns log p(answer | question, passage_k) for every passage in one
batched forward pass; the trainers' losses are built on `read_logprobs`, which it wraps, and on
`answer_logprobs`.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from indexer.encoder import check_model_folder, resolve_device
from rag.adapters import AdapterBank, load_merged, virtual_tokens
from rag.models import GENERATIVE_READER, resolve_reader_path

SYSTEM_PROMPT = (
    "You answer questions using the given passages. "
    "Reply with only the answer: a short phrase copied from a passage, not a sentence."
)
CLOSED_BOOK_PROMPT = "You answer questions. Reply with only the answer: a short phrase, not a sentence."


class PassageText(Protocol):
    """Anything with a title and a text: a SearchHit, a Passage, an edit rendered as a passage."""

    title: str
    text: str


def pick_device(device: str | None) -> torch.device:
    """`resolve_device` as a torch.device: `None` or "auto" picks CUDA when there is one."""
    return torch.device(resolve_device(device))


def load_pretrained(path: str, model_class: Any, device: torch.device, dtype: torch.dtype | None,
                    **settings: Any) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A reader's tokenizer and model (`model_class`: an Auto class) from a folder, read offline, or a hub name; dtype
    None is bf16 on a GPU and float32 elsewhere. OSError (or ValueError) when either cannot load; ValueError for the folder of
    a peft adapter alone, which holds no model."""
    if os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"reader {path}: this is a peft adapter folder: pass it as --adapter over its base reader")
    check_model_folder(path)
    local = os.path.isdir(path) or None
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return (AutoTokenizer.from_pretrained(path, local_files_only=local),
            model_class.from_pretrained(path, local_files_only=local, dtype=dtype, **settings))


# What a byte-level tokenizer's decode gives for the first bytes of a character split over several tokens.
PARTIAL = "\ufffd"
# A byte-level BPE's tokens spell bytes in GPT-2's alphabet: each of its characters -> the byte it stands for.
BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


class SpanConstraint(LogitsProcessor):
    """Greedy decoding that may only spell a substring of the row's passages (or end the answer).

    Candidates are the tokens of the passages' own tokenisation (words with and without their
    leading space): testing a few hundred candidates per step instead of the whole vocabulary.
    """

    def __init__(self, reader: DecoderReader, passages: Sequence[Sequence[PassageText]], prompt_width: int) -> None:
        self.tokenizer = reader.tokenizer
        self.ends = reader.end_ids
        self.prompt_width = prompt_width
        # What the prompt shows of each passage: its first max_passage_tokens (cut, maybe, inside a character).
        self.texts = [[" ".join(reader._truncate(p.text).rstrip(PARTIAL).split()) for p in row] for row in passages]
        self.encoded = [[text.encode() for text in row] for row in self.texts]
        self.candidates = [self._candidates(texts) for texts in self.texts]
        # With a byte-level BPE, a character split over tokens is matched byte by byte.
        decoder = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_of = BYTE_OF if type(decoder).__name__ == "ByteLevel" else None

    def _candidates(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, dtype=torch.long)
        words = {w for text in texts for w in text.split()}
        pieces = texts + sorted(words)
        ids = {t for ids in self.tokenizer(pieces, add_special_tokens=False)["input_ids"] for t in ids}
        return torch.tensor(sorted(ids - set(self.ends)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            if not self.texts[row]:
                allowed[row] = scores[row]
                continue
            ids = input_ids[row, self.prompt_width :].tolist()
            so_far = self.tokenizer.decode(ids, skip_special_tokens=True)
            candidates = self.candidates[row].to(scores.device)
            order = candidates[scores[row, candidates].argsort(descending=True)].tolist()
            # Greedy needs only the best candidate that still spells a passage substring. Decoded with the tokens
            # before it: the bytes of a character split over several tokens only make the character together.
            best = next((t for t in order if self._fits(row, ids + [t])), None)
            whole = so_far.strip() and not so_far.endswith(PARTIAL)  # no end in the middle of a character
            ok = ([best] if best is not None else []) + (self.ends if whole or best is None else [])
            allowed[row, ok] = scores[row, ok]
        return allowed

    def _fits(self, row: int, ids: list[int]) -> bool:
        """Whether the answer tokens `ids` spell a substring of the row's passages. The first bytes of a character
        (decoded as U+FFFD until its last byte comes) must be those of the passage's character there; without a
        byte-level tokenizer, any character beyond ASCII will do."""
        answer = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not answer.endswith(PARTIAL):
            spelled = " ".join(answer.split())
            return bool(spelled) and any(spelled in text for text in self.texts[row])
        if self.byte_of is not None:
            try:
                raw = bytes(self.byte_of[c] for token in self.tokenizer.convert_ids_to_tokens(ids) for c in token)
            except KeyError:  # a token outside the byte alphabet (a special one)
                return False
            spelled = b" ".join(raw.split())
            # Bytes 0x80-0xBF only go on a character: an answer starting with one could never be completed.
            return not 0x80 <= spelled[0] < 0xC0 and any(spelled in text for text in self.encoded[row])
        follows = re.compile(re.escape(re.sub(r"\s+", " ", answer.rstrip(PARTIAL)).lstrip()) + "[^\x00-\x7f]")
        return any(follows.search(text) for text in self.texts[row])


class AnswerScorer:
    """What the generative readers share on top of their `read_logprobs`: scoring passages one at a time."""

    def read_logprobs(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]],
                      answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def score(self, question: str, passages: Sequence[PassageText], answer: str) -> torch.Tensor:
        """log p(answer | question, passage_k) for each passage k alone, shape (K,), in one batched call."""
        if not passages:
            raise ValueError("score needs at least one passage")
        return self.read_logprobs([question] * len(passages), [[p] for p in passages], [answer] * len(passages))[0]


class DecoderReader(AnswerScorer):
    """A causal LM that reads passages and answers; any Hugging Face causal LM name or folder works."""

    default_k = 5  # passages per question when a request does not say: prompt length is latency

    def __init__(
        self,
        name_or_path: str = GENERATIVE_READER,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 24,
        max_passage_tokens: int = 192,
        constrain_to_passages: bool = False,
    ) -> None:
        self.device = pick_device(device)
        try:
            self.tokenizer, self.model = load_pretrained(resolve_reader_path(name_or_path), AutoModelForCausalLM, self.device, dtype)
        except OSError as exc:
            raise RuntimeError(f"cannot load reader {name_or_path!r}: {exc}") from exc
        if self.tokenizer.chat_template is None:
            raise RuntimeError(f"reader {name_or_path!r} has no chat template: use an instruction-tuned causal LM")
        self.name = name_or_path
        self.adapter = str(adapter) if adapter else None
        if adapter:
            self.model = load_merged(self.model, adapter)
        self.model.to(self.device).eval()
        self.adapters = AdapterBank(self.model)
        self.max_new_tokens = max_new_tokens
        self.max_passage_tokens = max_passage_tokens
        # Positions the model was trained on: a prompt and its answer beyond them would be read as noise.
        self.context_tokens: int = getattr(self.model.config, "max_position_embeddings", None) or sys.maxsize
        self.constrain_to_passages = constrain_to_passages
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self._special_texts = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special and len(t.content) > 1]
        self.end_ids = self._end_token_ids()

    def _end_token_ids(self) -> list[int]:
        """End of turn plus every token that contains a newline: an answer is one line."""
        ends = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(i, int) and i >= 0}
        for token_id in range(len(self.tokenizer)):
            if "\n" in self.tokenizer.decode([token_id]):
                ends.add(token_id)
        return sorted(ends)

    # -- prompts ---------------------------------------------------------------------------------

    def _truncate(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_passage_tokens else self.tokenizer.decode(ids[: self.max_passage_tokens])

    def prompt_ids(self, question: str, passages: Sequence[PassageText], shots: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Token ids of the chat prompt for `question` over `passages` (none: closed book), ending where the answer
        starts. `shots`: (question, answer) pairs shown first as earlier turns (in-context learning)."""
        return self.fitted_prompt(question, passages, shots)[0]

    def fitted_prompt(self, question: str, passages: Sequence[PassageText],
                      shots: Sequence[tuple[str, str]] = ()) -> tuple[list[int], int]:
        """`prompt_ids` and how many of the passages, the first ones, it holds: as many as fit the model's context."""
        earlier = [(f"Question: {q.strip()}", a) for q, a in shots]
        if not passages:
            return self.chat_ids(CLOSED_BOOK_PROMPT, f"Question: {question.strip()}", earlier), 0

        texts = [self._truncate(p.text) for p in passages]

        def prompt(n: int) -> list[int]:
            context = "\n\n".join(f"[{i}] {p.title}\n{text}" for i, (p, text) in enumerate(zip(passages[:n], texts), 1))
            return self.chat_ids(SYSTEM_PROMPT, f"Passages:\n{context}\n\nQuestion: {question.strip()}", earlier)

        room = self.context_tokens - self.max_new_tokens - virtual_tokens(self.model)
        if len(ids := prompt(len(passages))) <= room:
            return ids, len(passages)
        # Many passages (k goes up to 100): only the best that fit the model's context with room for the answer, the
        # largest such count by bisection. The first passage stays, whatever its length.
        fitting, too_many = 1, len(passages)
        while too_many - fitting > 1:
            middle = (fitting + too_many) // 2
            if len(prompt(middle)) <= room:
                fitting = middle
            else:
                too_many = middle
        return prompt(fitting), fitting

    def chat_ids(self, system: str, user: str, shots: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Token ids of a chat: the system message, `shots` as earlier (user, assistant) turns, then `user`;
        ending where the assistant's reply starts."""
        messages = [{"role": "system", "content": system}]
        for asked, replied in shots:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": replied}]
        messages.append({"role": "user", "content": user})
        for message in messages:  # text that spells a special token stays text: it must not end a turn or start one
            for token in self._special_texts:
                message["content"] = message["content"].replace(token, token[0] + "\u200b" + token[1:])
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)

    @contextmanager
    def adapted(self, adapter: str | Path | None) -> Iterator[None]:
        """Within the block, the reader runs with the peft adapter in folder `adapter` over its model as loaded
        (None: without one). Each adapter is loaded once and kept (`rag.adapters.AdapterBank`); one thread at a time."""
        loaded = self.model
        self.model = self.adapters.model(adapter).to(self.device)
        try:
            yield
        finally:
            self.model = loaded

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as the reader should produce it: the text, then end of turn."""
        return self.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"] + [self._target_end_id()]

    def _target_end_id(self) -> int:
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        return im_end if isinstance(im_end, int) and im_end >= 0 else self.tokenizer.eos_token_id

    # -- answering -------------------------------------------------------------------------------

    def left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and position ids (positions start at 0 on each row's first real token)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _model_inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """The model to run on left-padded `ids` and its inputs. Under a prompt-tuning adapter: its base model, given
        embeddings with the virtual tokens right after each row's padding. (peft puts them before the padding, which
        moves a padded row's positions with the batch, and its cached generation drifts from the model's own answer.)"""
        n = virtual_tokens(self.model)
        if not n:
            return self.model, {"input_ids": ids, "attention_mask": mask}
        base = self.model.get_base_model()
        virtual = self.model.get_prompt(batch_size=len(ids))  # (rows, n, hidden), differentiable when training
        words = base.get_input_embeddings()(ids)
        pads = (mask == 0).sum(-1).tolist()
        embeds = torch.stack([torch.cat([w[:p], v.to(w.dtype), w[p:]]) for w, v, p in zip(words, virtual, pads)])
        full_mask = torch.stack([torch.cat([m[:p], m.new_ones(n), m[p:]]) for m, p in zip(mask, pads)])
        return base, {"inputs_embeds": embeds, "attention_mask": full_mask}

    @torch.inference_mode()
    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]]) -> list[str]:
        """Greedy short answers, one per question, each from its own list of passages (empty list: closed book).

        With `constrain_to_passages`, every answer is a substring of its passages (white space collapsed).
        """
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions but {len(passages)} passage lists")
        fitted = [self.fitted_prompt(q, p) for q, p in zip(questions, passages)]
        # The constraint keeps answers within the passages the prompt holds, not those cut to fit the context.
        return self.complete([ids for ids, _ in fitted], [row[:n] for row, (_, n) in zip(passages, fitted)])

    @torch.inference_mode()
    def complete(self, prompts: Sequence[Sequence[int]], passages: Sequence[Sequence[PassageText]] | None = None) -> list[str]:
        """Greedy one-line replies to prompts already tokenised (`prompt_ids`, `chat_ids`). `passages`, one list
        per prompt, are what `constrain_to_passages` keeps the answers within."""
        if not prompts:
            return []
        ids, mask, _ = self.left_pad(prompts)
        model, inputs = self._model_inputs(ids, mask)
        # Given embeddings rather than ids, generate returns (and shows the constraint) the new tokens only.
        prompt_width = ids.shape[1] if "input_ids" in inputs else 0
        constrain = self.constrain_to_passages and passages is not None
        constraint = LogitsProcessorList([SpanConstraint(self, passages, prompt_width)]) if constrain else None
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.end_ids,
            pad_token_id=self.pad_id,
            logits_processor=constraint,
        )
        answers = []
        for row in out[:, prompt_width:].tolist():
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            answers.append(text.split("\n", 1)[0].strip())
        return answers

    def answer_logprobs(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log p(answer tokens | prompt) per row, and each row's answer length; differentiable.

        Rows are left-padded so every answer ends at the last position; only the last positions'
        logits are computed, which keeps memory at (rows x answer length x vocabulary).
        """
        rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
        ids, mask, _ = self.left_pad(rows)
        longest = max(len(a) for a in answers)
        model, inputs = self._model_inputs(ids, mask)
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**inputs, position_ids=positions, logits_to_keep=longest + 1).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
        targets = ids[:, -longest:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(a) for a in answers], device=self.device)
        in_answer = torch.arange(longest, device=self.device).unsqueeze(0) >= (longest - lengths).unsqueeze(1)
        return (picked * in_answer).sum(-1), lengths

    def read_logprobs(self, questions: Sequence[str], passages: Sequence[Sequence[PassageText]],
                      answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(answer | question, its passages) per row, all passages of a row in one prompt as `generate` reads
        them, and each answer's length in tokens; differentiable, one batched forward pass."""
        prompts = [self.prompt_ids(q, p) for q, p in zip(questions, passages)]
        return self.answer_logprobs(prompts, [self.answer_ids(a) for a in answers])
