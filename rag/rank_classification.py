"""Rank classification, as T-Few does it: the reader scores every choice (a label's words, or a multiple-choice
option) as its reply to the prompt, and the most likely choice is the prediction.

A choice's score is its length-normalised log-likelihood: the sum of log p(token) over the choice's
tokens and the end-of-turn token that closes the reply, divided by their number (T-Few's L_LN
normalisation). Normalising keeps long choices (COPA's sentences, "description") from losing to short
ones merely for having more tokens. The end-of-turn token makes "yes" as a whole reply differ from
"yes" as the start of a sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from rag.adapters import virtual_tokens
from rag.reader import DecoderReader


@dataclass(frozen=True)
class Ranking:
    """The chosen choice, every choice's score (mean log-likelihood per token), and the tokens read to score them."""

    best: int
    scores: list[float]
    tokens: int


def choice_scores(reader: DecoderReader, prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Length-normalised log-likelihood of each prompt's choices, one tensor (n_choices,) per prompt, in one
    batched pass; differentiable (training's losses use it).

    When every prompt has as many choices and the model keeps a plain key/value cache, each prompt is read
    once and its cache shared by its choices (a prompt-tuning model re-reads it per choice: peft would put
    its virtual tokens before the choice too)."""
    if any(not options for options in choices):
        raise ValueError("a prompt needs at least one choice to rank")
    targets = [[reader.answer_ids(option) for option in options] for options in choices]
    if len({len(options) for options in choices}) == 1 and not virtual_tokens(reader.model):
        sums, lengths = _shared_prompt_logprobs(reader, prompts, targets)
    else:
        rows = [prompt for prompt, options in zip(prompts, targets, strict=True) for _ in options]
        sums, lengths = reader.answer_logprobs(rows, [t for options in targets for t in options])
    return list((sums / lengths).split([len(options) for options in choices]))


def _shared_prompt_logprobs(reader: DecoderReader, prompts: Sequence[Sequence[int]],
                            targets: Sequence[Sequence[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(choice tokens | prompt) and token count per (prompt, choice) row: each prompt read once,
    its key/value cache repeated for its choices, which are read right-padded after it."""
    n = len(targets[0])
    ids, mask, positions = reader.left_pad(prompts)
    out = reader.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(n, dim=0)  # predicts each choice's first token
    cache = out.cache
    cache.batch_repeat_interleave(n)
    rows = [t for options in targets for t in options]
    width = max(len(t) for t in rows)
    choice_ids = torch.full((len(rows), width), reader.pad_id, dtype=torch.long, device=reader.device)
    choice_mask = torch.zeros((len(rows), width), dtype=torch.long, device=reader.device)
    for i, t in enumerate(rows):
        choice_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        choice_mask[i, : len(t)] = 1
    following = positions[:, -1:].repeat_interleave(n, dim=0) + 1 + torch.arange(width, device=reader.device)
    attention = torch.cat([mask.repeat_interleave(n, dim=0), choice_mask], dim=1)
    logits = reader.model(input_ids=choice_ids, attention_mask=attention, position_ids=following, cache=cache).logits
    rest = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, choice_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    sums = first.gather(-1, choice_ids[:, :1]).squeeze(-1) + (rest * choice_mask[:, 1:]).sum(-1)
    return sums, choice_mask.sum(-1)


def _groups(prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[str]], max_tokens: int) -> Iterator[slice]:
    """Consecutive slices of prompts whose rows (prompt x choices, padded to the longest) fit in `max_tokens`; at least one prompt each."""
    start, rows, width = 0, 0, 0
    for i, (prompt, options) in enumerate(zip(prompts, choices)):
        new_rows, new_width = rows + len(options), max(width, len(prompt) + 8)
        if i > start and new_rows * new_width > max_tokens:
            yield slice(start, i)
            start, new_rows, new_width = i, len(options), len(prompt) + 8
        rows, width = new_rows, new_width
    if start < len(prompts):
        yield slice(start, len(prompts))


@torch.inference_mode()
def rank_classify(reader: DecoderReader, prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[str]],
                  max_tokens: int = 8192) -> list[Ranking]:
    """The most likely choice for each prompt, batched by a budget of about `max_tokens` padded tokens per forward pass."""
    rankings: list[Ranking] = []
    for part in _groups(prompts, choices, max_tokens):
        scores = choice_scores(reader, prompts[part], choices[part])
        shared = len({len(options) for options in choices[part]}) == 1 and not virtual_tokens(reader.model)
        for prompt, options, row in zip(prompts[part], choices[part], scores):
            read = len(prompt) * (1 if shared else len(options)) + sum(len(reader.answer_ids(option)) for option in options)
            rankings.append(Ranking(int(row.argmax()), [float(s) for s in row], read))
    return rankings
