"""The shared training loop: gradient accumulation is exact, and each step logs one line of means."""
from __future__ import annotations

import io
import json

import pytest
import torch

from trainer.fit import TrainingDiverged, fit

INPUTS = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
TARGETS = INPUTS @ torch.tensor([1.0, -2.0, 0.5])


def trained(batch_size: int, grad_accum: int) -> tuple[torch.nn.Linear, list[dict]]:
    """A linear model fitted for two steps of `grad_accum` micro-batches of `batch_size` rows (INPUTS in order)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    model.bias.requires_grad_(False)  # a frozen parameter, as a LoRA model's base is

    def batch_at(micro: int) -> slice:
        start = (micro - 1) * batch_size % len(INPUTS)
        return slice(start, start + batch_size)

    def loss_of(rows: slice) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ((model(INPUTS[rows]).squeeze(-1) - TARGETS[rows]) ** 2).mean()
        return loss, {"first_row": float(rows.start)}

    log = io.StringIO()
    fit(model, batch_at, loss_of, log, steps=2, lr=0.1, weight_decay=0.0, warmup=0.0, bf16=False, desc="test",
        grad_accum=grad_accum, progress=False)
    return model, [json.loads(line) for line in log.getvalue().splitlines()]


def test_accumulated_micro_batches_train_as_one_batch() -> None:
    whole, whole_log = trained(batch_size=4, grad_accum=1)
    accumulated, accumulated_log = trained(batch_size=2, grad_accum=2)
    assert torch.allclose(whole.weight, accumulated.weight, atol=1e-6)
    torch.manual_seed(0)
    untrained = torch.nn.Linear(3, 1)
    assert not torch.allclose(whole.weight, untrained.weight) and torch.equal(accumulated.bias, untrained.bias)  # the bias is frozen
    assert [row["loss"] for row in accumulated_log] == [pytest.approx(row["loss"], rel=1e-5) for row in whole_log]
    # The step's part is the mean over its micro-batches: rows 0 and 2, then 4 and 6.
    assert [row["first_row"] for row in accumulated_log] == [1.0, 5.0] and [row["step"] for row in accumulated_log] == [1, 2]



@pytest.mark.parametrize("loss_of_weight, message", [
    (lambda weight: weight.sum() * float("nan"), "training diverged at step 1: the loss is nan"),
    # A finite loss whose gradient is not: d/dw sqrt(|0 * w|) is nan.
    (lambda weight: (weight * 0).abs().sqrt().sum(), "the loss is 0, its gradient norm nan"),
])
def test_a_loss_or_gradient_that_is_not_finite_stops_the_run_before_its_step(loss_of_weight, message: str) -> None:
    model = torch.nn.Linear(3, 1)
    before = model.weight.detach().clone()
    log = io.StringIO()
    with pytest.raises(TrainingDiverged, match=message):
        fit(model, lambda micro: micro, lambda _: (loss_of_weight(model.weight), {}), log, steps=2, lr=0.1, weight_decay=0.0,
            warmup=0.0, bf16=False, desc="test", progress=False)
    assert torch.equal(model.weight, before) and log.getvalue() == ""  # no NaN weights, no NaN in the metrics
