"""The scores RoSA's masks are chosen from: the dense weight gradient G = grad_out^T @ x of every target matrix,
captured by hooks over a few batches and accumulated per example (weighted to each example's own mean loss) or
per batch, on a buffer device."""

from __future__ import annotations

import torch
from torch import nn

from harness.batching import example_segments, supervised_token_counts
from harness.methods.base import MethodConfigError
from harness.methods.rosa.masks import _weight_shape

MASK_SCORES = ("fisher", "mean", "batch_squared")


def _example_weights(batch) -> tuple[list[tuple[int, slice]], torch.Tensor]:
    """The examples of a micro-batch (harness.batching: rows when padded, runs of a row when packed) and their
    weights w_i = N / N_i, which turn the gradient of the micro-batch's mean loss (over its N supervised tokens)
    into that of example i's own mean loss (over its N_i tokens), as a micro-batch of one computes it."""
    segments = example_segments(batch)
    counts = supervised_token_counts(batch, segments)
    return segments, torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))


class _GradientCapture:
    """Forward hooks on the target matrices whose gradient hooks add each micro-batch's contribution to the
    scores: G = grad_out^T @ x per example (weighted to its own mean loss; squared for `fisher`) or per batch."""

    def __init__(self, targets: dict[str, nn.Module], score: str, buffer_device: str):
        self.score, self.per_example, self.buffer_device = score, score != "batch_squared", buffer_device
        self.scores = {name: torch.zeros(_weight_shape(m), dtype=torch.float32, device=buffer_device)
                       for name, m in targets.items()}
        self.batch_grads: dict[str, torch.Tensor] = {}
        self.reached: set[str] = set()
        self.weights = None  # this micro-batch's examples and their weights (per-example scores)
        self.handles = [module.register_forward_hook(self._forward_hook(name)) for name, module in targets.items()]

    def _forward_hook(self, name):
        def forward_hook(module, args, output):
            x = args[0].detach().float()
            if output.requires_grad:
                output.register_hook(lambda grad: self._on_grad(name, grad.float(), x))
        return forward_hook

    def _on_grad(self, name: str, grad: torch.Tensor, x: torch.Tensor) -> None:
        self.reached.add(name)
        if not self.per_example:
            self.batch_grads[name].add_(grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1]))
            return
        total = None
        segments, example_weights = self.weights
        for (row, positions), w in zip(segments, example_weights.tolist()):
            if w == 0.0:
                continue
            g_out, g_in = grad[row, positions], x[row, positions]
            g = (g_out.reshape(-1, grad.shape[-1]).t() @ g_in.reshape(-1, x.shape[-1])).mul_(w)
            g = g.square_() if self.score == "fisher" else g
            total = g if total is None else total.add_(g)
        if total is not None:
            self.scores[name].add_(total.to(self.buffer_device))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def accumulate_gradient_scores(model, batches, targets: dict[str, nn.Module], score: str,
                               buffer_device: str = "cpu") -> dict[str, torch.Tensor]:
    """The dense score of every target matrix from the dense weight gradients G = grad_out^T @ x.

    `fisher` (the official hook, IST-DASLab/peft-rosa hooks.py ManualGradCollectorHook, which fires per backward
    call with micro-batch 1): mean over examples of G_i^2, G_i the gradient of example i's own loss: the
    empirical diagonal Fisher, the same whatever the micro-batch size. `mean`: mean over examples of G_i.
    `batch_squared` (an earlier harness score, not the paper's): mean over batches of the squared gradient of the
    batch's mean loss. The running scores live on `buffer_device` (the CPU, as the official code keeps them: at
    LLaMA-2-7B all-linear they are ~26 GB); one matrix at a time is formed on the model's device.
    """
    if score not in MASK_SCORES:
        raise MethodConfigError(f"method.mask_score={score!r}: use one of {list(MASK_SCORES)}")
    capture = _GradientCapture(targets, score, buffer_device)
    count = 0  # examples (per-example scores) or batches (batch_squared)
    try:
        for micro_batches in batches:
            micro_batches = list(micro_batches)
            if not capture.per_example:
                capture.batch_grads.update({name: torch.zeros(_weight_shape(m), dtype=torch.float32,
                                                              device=next(m.parameters()).device)
                                            for name, m in targets.items()})
            for batch in micro_batches:
                model.zero_grad(set_to_none=True)
                capture.weights = _example_weights(batch)
                loss = model(**batch).loss
                (loss if capture.per_example else loss / len(micro_batches)).backward()
                count += int((capture.weights[1] > 0).sum()) if capture.per_example else 0
            if not capture.per_example:
                for name, g in capture.batch_grads.items():
                    capture.scores[name].add_(g.square_().to(buffer_device))
                capture.batch_grads.clear()
                count += 1
    finally:
        capture.remove()
        model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("RoSA mask generation saw no batch (or no example with a supervised token)")
    unreached = sorted(set(targets) - capture.reached)
    if unreached:  # all-zero scores would give an arbitrary mask
        raise ValueError(f"RoSA mask generation: no gradient reached {len(unreached)} target(s), e.g. {unreached[:3]}")
    return {name: s.div_(count).abs_() for name, s in capture.scores.items()}
