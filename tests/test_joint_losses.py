"""The joint-training losses against hand-computed values, K=1, autograd gradchecks and their stop-gradients."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.joint_losses import adist_loss, emdr2_loss, in_batch_targets, loop_loss, pdist_loss, rag_marginal_loss, retriever_log_probs

# Two passages with p_ret = (1/4, 3/4) at tau: s = (0, tau log 3).
TAU = 0.1
SCORES = torch.tensor([0.0, TAU * math.log(3.0)], dtype=torch.float64)
READER = torch.log(torch.tensor([0.5, 0.1], dtype=torch.float64))  # log p_LM(a|q,d_k)
LEAVE_ONE_OUT = torch.log(torch.tensor([0.2, 0.6], dtype=torch.float64))  # log p_LM(a|q,D minus d_k)


def leaf(values: torch.Tensor) -> torch.Tensor:
    return values.clone().requires_grad_(True)


def test_retriever_distribution_uses_tau() -> None:
    assert torch.allclose(retriever_log_probs(SCORES, TAU).exp(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="tau"):
        retriever_log_probs(SCORES, 0.0)


def test_hand_computed_values() -> None:
    # Marginal: 1/4 * 0.5 + 3/4 * 0.1 = 0.2.
    assert rag_marginal_loss(SCORES, READER, TAU).item() == pytest.approx(-math.log(0.2))
    assert emdr2_loss(SCORES, READER, TAU).item() == pytest.approx(-math.log(0.2))
    # PDist: t = (0.5, 0.1) / 0.6 = (5/6, 1/6).
    pdist = 5 / 6 * math.log((5 / 6) / 0.25) + 1 / 6 * math.log((1 / 6) / 0.75)
    assert pdist_loss(SCORES, READER, TAU, temperature=1.0).item() == pytest.approx(pdist)
    # PDist at T=2: t proportional to sqrt(0.5), sqrt(0.1).
    a, b = math.sqrt(0.5), math.sqrt(0.1)
    t = (a / (a + b), b / (a + b))
    assert pdist_loss(SCORES, READER, TAU, temperature=2.0).item() == pytest.approx(t[0] * math.log(t[0] / 0.25) + t[1] * math.log(t[1] / 0.75))
    # LOOP: t proportional to 1/0.2 and 1/0.6 = (3/4, 1/4); KL against (1/4, 3/4) = 1/2 log 3.
    assert loop_loss(SCORES, LEAVE_ONE_OUT, TAU, temperature=1.0).item() == pytest.approx(0.5 * math.log(3.0))
    # ADist: mass (2, 6) normalises to (1/4, 3/4) = p_ret, so KL = 0; mass (1, 0) gives KL = -log(1/4).
    assert adist_loss(SCORES, torch.tensor([2.0, 6.0], dtype=torch.float64), TAU).item() == pytest.approx(0.0, abs=1e-12)
    assert adist_loss(SCORES, torch.tensor([1.0, 0.0], dtype=torch.float64), TAU).item() == pytest.approx(math.log(4.0))


def test_batches_average_over_questions() -> None:
    scores = torch.stack([SCORES, SCORES.flip(0)])
    reader = torch.stack([READER, READER])
    first, second = (rag_marginal_loss(scores[i], reader[i], TAU) for i in range(2))
    assert rag_marginal_loss(scores, reader, TAU).item() == pytest.approx((first.item() + second.item()) / 2)
    assert second.item() == pytest.approx(-math.log(0.75 * 0.5 + 0.25 * 0.1))


def test_one_passage() -> None:
    """K=1: p_ret is 1, so the marginal is the reader's own NLL and every distillation loss is 0 with zero gradient."""
    scores = leaf(torch.tensor([[0.7]], dtype=torch.float64))
    reader = torch.tensor([[-2.5]], dtype=torch.float64)
    assert rag_marginal_loss(scores, reader, TAU).item() == pytest.approx(2.5)
    for loss in (pdist_loss(scores, reader, TAU), loop_loss(scores, reader, TAU), adist_loss(scores, torch.ones(1, 1, dtype=torch.float64), TAU),
                 emdr2_loss(scores, reader, TAU) - 2.5):
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
        (grad,) = torch.autograd.grad(loss, scores)
        assert torch.all(grad == 0)


def test_retriever_gradient_is_p_minus_t_over_tau() -> None:
    """For a KL to p_ret, d loss / d s = (p_ret - t) / tau: the retriever moves towards the target."""
    scores = leaf(SCORES)
    pdist_loss(scores, READER, TAU).backward()
    expected = (torch.tensor([0.25, 0.75]) - torch.tensor([5 / 6, 1 / 6])).double() / TAU
    assert torch.allclose(scores.grad, expected)
    # EMDR^2: d/ds = (p_ret - posterior) / tau, posterior_k proportional to p_ret_k p_LM_k.
    scores = leaf(SCORES)
    emdr2_loss(scores, READER, TAU).backward()
    posterior = torch.tensor([0.125, 0.075], dtype=torch.float64) / 0.2
    assert torch.allclose(scores.grad, (torch.tensor([0.25, 0.75], dtype=torch.float64) - posterior) / TAU)


@pytest.mark.parametrize("name", ["rag", "emdr2", "pdist", "loop", "adist"])
def test_gradcheck(name: str) -> None:
    torch.manual_seed(0)
    scores = leaf(torch.randn(3, 4, dtype=torch.float64))
    reader = leaf(-torch.rand(3, 4, dtype=torch.float64) * 5)
    mass = torch.rand(3, 4, dtype=torch.float64) + 0.1
    functions = {
        "rag": lambda s, r: rag_marginal_loss(s, r, 0.5),
        "emdr2": lambda s: emdr2_loss(s, reader, 0.5),
        "pdist": lambda s: pdist_loss(s, reader, 0.5, temperature=0.7),
        "loop": lambda s: loop_loss(s, reader, 0.5, temperature=0.7),
        "adist": lambda s: adist_loss(s, mass, 0.5),
    }
    inputs = (scores, reader) if name == "rag" else (scores,)
    assert torch.autograd.gradcheck(functions[name], inputs)


@pytest.mark.parametrize("loss", [emdr2_loss, pdist_loss, loop_loss])
def test_reader_side_is_under_stop_gradient(loss) -> None:
    """EMDR^2, PDist and LOOP train the retriever only; the RAG marginal trains the reader too."""
    scores, reader = leaf(torch.randn(2, 3, dtype=torch.float64)), leaf(-torch.rand(2, 3, dtype=torch.float64))
    loss(scores, reader, 0.5).backward()
    assert reader.grad is None and scores.grad is not None and scores.grad.abs().sum() > 0
    rag_marginal_loss(scores, reader, 0.5).backward()
    assert reader.grad is not None and reader.grad.abs().sum() > 0
    # The reader's gradient of the marginal is minus the posterior over passages (per question, batch-averaged).
    posterior = torch.softmax(retriever_log_probs(scores, 0.5) + reader, dim=-1).detach()
    assert torch.allclose(reader.grad, -posterior / 2)


def test_attention_targets_are_under_stop_gradient_and_checked() -> None:
    scores, mass = leaf(torch.randn(2, 3, dtype=torch.float64)), leaf(torch.rand(2, 3, dtype=torch.float64))
    adist_loss(scores, mass, 0.5).backward()
    assert mass.grad is None and scores.grad is not None
    with pytest.raises(ValueError, match="non-negative"):
        adist_loss(SCORES, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        pdist_loss(SCORES, READER, temperature=0.0)


def test_in_batch_negatives_give_the_other_questions_passages_no_target_mass() -> None:
    """Spread to the (B, B*K) in-batch columns, each question's targets sit on its own passages; the fill gives the
    others no mass, so they only take p_ret away: with their scores far below, every loss is the plain one, and with
    them level the hand-computed values change as the wider softmax says."""
    reader = leaf(torch.stack([READER, READER.flip(0)]))
    wide = in_batch_targets(reader, -math.inf)
    assert wide.shape == (2, 4)
    assert torch.equal(wide[0, :2], READER) and torch.equal(wide[1, 2:], READER.flip(0))
    assert torch.isinf(wide[0, 2:]).all() and torch.isinf(wide[1, :2]).all()
    wide.sum(-1).clamp(min=-1e9).sum().backward()  # differentiable in the targets, for the RAG marginal's reader side
    assert reader.grad is not None
    far = torch.tensor([[0.0, TAU * math.log(3.0), -1e3, -1e3], [-1e3, -1e3, 0.0, TAU * math.log(3.0)]], dtype=torch.float64)
    plain = torch.stack([SCORES, SCORES])
    own = reader.detach()
    for loss, fill in [(emdr2_loss, -math.inf), (rag_marginal_loss, -math.inf), (pdist_loss, -math.inf), (loop_loss, math.inf)]:
        assert loss(far, in_batch_targets(own, fill), TAU).item() == pytest.approx(loss(plain, own, TAU).item())
    assert adist_loss(far, in_batch_targets(torch.tensor([[2.0, 6.0]] * 2, dtype=torch.float64), 0.0), TAU).item() == pytest.approx(0.0, abs=1e-9)
    # Level: each question's p_ret over the four passages is (1/8, 3/8, 1/8, 3/8), its marginal 1/8 * 0.5 + 3/8 * 0.1 = 0.1.
    level = torch.tensor([[0.0, TAU * math.log(3.0)] * 2] * 2, dtype=torch.float64)
    assert emdr2_loss(level, in_batch_targets(torch.stack([READER, READER]), -math.inf), TAU).item() == pytest.approx(-math.log(0.1))
