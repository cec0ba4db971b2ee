"""Retriever losses for joint retriever-reader training, exactly as ARCHITECTURE.md defines them.

Every function takes the retriever's scores s of the top-K passages, shape (B, K) (or (K,) for one
question), with p_ret(d_k|q) = softmax_k(s_k / tau), and returns the mean loss over the batch:

- `rag_marginal_loss`: -log sum_k p_ret(d_k|q) p_LM(a|q,d_k); gradients reach both models.
- `emdr2_loss`:        -log sum_k SG[p_LM(a|q,d_k)] p_ret(d_k|q); the retriever side only (Atlas, EMDR^2).
- `pdist_loss`:        KL(t || p_ret), t_k = softmax_k(log p_LM(a|q,d_k) / T).
- `loop_loss`:         KL(t || p_ret), t_k = softmax_k(-log p_LM(a|q,D minus d_k) / T).
- `adist_loss`:        KL(t || p_ret), t_k proportional to the reader's cross-attention mass on d_k.

The distillation targets t are teachers, as in Atlas: they are taken under stop-gradient, so these
losses train the retriever only (the reader trains with its own answer NLL beside them).
"""
from __future__ import annotations

import torch


def retriever_log_probs(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """log p_ret(d_k|q) = log_softmax_k(s_k / tau) over the last dimension."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return torch.log_softmax(scores / tau, dim=-1)


def in_batch_targets(targets: torch.Tensor, fill: float) -> torch.Tensor:
    """(B, K) targets over each question's own candidates spread to (B, B*K), the columns of scores with in-batch
    negatives (question b's own at b*K to b*K+K-1): `fill`, the value that gives a passage no target mass (-inf for
    log-likelihoods, 0 for attention mass), on every other question's passages. Differentiable in `targets`."""
    b, k = targets.shape
    own = torch.arange(b, device=targets.device)[:, None] * k + torch.arange(k, device=targets.device)
    return targets.new_full((b, b * k), fill).scatter(1, own, targets)


def _kl_to_retriever(target: torch.Tensor, scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over the batch of KL(target || p_ret); a zero target entry contributes 0 (xlogy)."""
    per_question = (torch.xlogy(target, target) - target * retriever_log_probs(scores, tau)).sum(-1)
    return per_question.mean()


def rag_marginal_loss(scores: torch.Tensor, reader_logprobs: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """RAG marginal likelihood: -log sum_k p_ret(d_k|q) p_LM(a|q,d_k), with `reader_logprobs` = log p_LM(a|q,d_k)."""
    return -torch.logsumexp(retriever_log_probs(scores, tau) + reader_logprobs, dim=-1).mean()


def emdr2_loss(scores: torch.Tensor, reader_logprobs: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """EMDR^2: the RAG marginal with the reader's likelihoods under stop-gradient (no gradient reaches the reader)."""
    return rag_marginal_loss(scores, reader_logprobs.detach(), tau)


def pdist_loss(scores: torch.Tensor, reader_logprobs: torch.Tensor, tau: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """Perplexity distillation: KL(softmax_k(log p_LM(a|q,d_k) / T) || p_ret)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _kl_to_retriever(torch.softmax(reader_logprobs.detach() / temperature, dim=-1), scores, tau)


def loop_loss(scores: torch.Tensor, leave_one_out_logprobs: torch.Tensor, tau: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """Leave-one-out perplexity distillation: KL(softmax_k(-log p_LM(a|q,D minus d_k) / T) || p_ret).

    `leave_one_out_logprobs[..., k]` = log p_LM(a | q, all top-K passages but d_k): a passage whose
    removal hurts the answer most gets the most target mass.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _kl_to_retriever(torch.softmax(-leave_one_out_logprobs.detach() / temperature, dim=-1), scores, tau)


def adist_loss(scores: torch.Tensor, attention_mass: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Attention distillation: KL(t || p_ret), t_k = the cross-attention mass on d_k (averaged over layers,
    heads and answer tokens) normalised over the K passages. Needs a reader with cross-attention (FiD)."""
    mass = attention_mass.detach()
    if (mass < 0).any():
        raise ValueError("attention mass must be non-negative")
    return _kl_to_retriever(mass / mass.sum(-1, keepdim=True), scores, tau)
