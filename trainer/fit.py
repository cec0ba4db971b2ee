"""The training loop the decoder reader, the span reader and the scope classifier share: AdamW with linear warm-up and
decay, gradient accumulation and clipping, optional bf16 autocast, a smoothed loss on the progress bar, a metrics line
per step and a periodic check."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

Batch = Sequence[Any]


def cycling(items: Sequence[Any], batch_size: int) -> Callable[[int], list[Any]]:
    """`batch_at` for `fit`: the n-th micro-batch is the next `batch_size` of `items`, in their order, wrapping around."""
    return lambda micro: [items[((micro - 1) * batch_size + i) % len(items)] for i in range(batch_size)]


class TrainingDiverged(RuntimeError):
    """The loss or its gradient is no longer a finite number: the weights are past saving, so the run stops."""


def check_finite(step: int, loss: float, grad_norm: float, advice: str = "try a lower --lr") -> None:
    """Raise TrainingDiverged unless this step's loss and gradient norm (before clipping) are finite numbers. Called
    before the optimizer steps: a run whose loss turns NaN stops there, never saving NaN weights as its model."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss:g}, its gradient norm {grad_norm:g}; "
                               f"{advice}")


@dataclass
class FitResult:
    """What the loop leaves for the run's record."""

    final_loss: float | None  # the smoothed loss after the last step
    seconds: float  # the loop's wall time, checks included


def fit(model: torch.nn.Module, batch_at: Callable[[int], Batch], loss_of: Callable[[Batch], tuple[torch.Tensor, dict[str, Any]]],
        log: IO[str], *, steps: int, lr: float, weight_decay: float, warmup: float, bf16: bool, desc: str, grad_accum: int = 1,
        progress: bool = True, check: Callable[[int, float | None], None] | None = None, check_every: int = 0) -> FitResult:
    """Train `model`'s trainable parameters for `steps` steps of `grad_accum` micro-batches each, `batch_at(n)` being
    the n-th micro-batch (1-based), minimising the loss `loss_of(batch)` returns with the parts to log beside it. Each
    step writes one JSON line in `log`: its loss and each part, means over its micro-batches. Every `check_every`
    steps but the last, `check(step, smoothed loss)` runs (a checkpoint, a quick dev score it may log too)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]  # a LoRA model's frozen base has no optimizer state
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup * steps), steps)
    result = FitResult(None, 0.0)
    started = time.time()
    with tqdm(range(1, steps + 1), desc=desc, unit="step", disable=not progress) as bar:  # closed before an error prints
        for step in bar:
            lr_now = schedule.get_last_lr()[0]  # this step's (after it, the next one's)
            value, parts = 0.0, {}
            for micro in range((step - 1) * grad_accum + 1, step * grad_accum + 1):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, micro_parts = loss_of(batch_at(micro))
                (loss / grad_accum).backward()
                value += loss.item() / grad_accum
                for name, part in micro_parts.items():
                    parts[name] = parts.get(name, 0) + part
            if grad_accum > 1:  # the mean over the micro-batches; one micro-batch's parts stay as they were (a count an int)
                parts = {name: total / grad_accum for name, total in parts.items()}
            check_finite(step, value, float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            result.final_loss = value if result.final_loss is None else 0.98 * result.final_loss + 0.02 * value
            bar.set_postfix(loss=f"{result.final_loss:.3f}")
            log.write(json.dumps({"step": step, "loss": value, **parts, "lr": lr_now, "seconds": round(time.time() - started, 2)}) + "\n")
            log.flush()
            if check is not None and check_every and step % check_every == 0 and step < steps:
                check(step, result.final_loss)
    result.seconds = time.time() - started
    return result
