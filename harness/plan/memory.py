"""Peak memory of a cell's training step on a GPU, by part, from the model's real shapes: the cell's model and
method are built on the meta device (with what the method's set-up would build from data: `Method.planned_setup`),
turned into fake tensors (shapes, no memory) and run for real through forward, backward and AdamW under the run's
autocast (`harness.plan.trace` counts what lives when).

The parts: frozen weights (in the GPU run's weight dtype), trainable weights (fp32 master weights), gradients
and optimizer moments (fp32), buffers (a method's fixed tensors: RoSA's sparse indices), and activations with the step's temporaries (what the forward pass saves for the
backward, the logits and the loss, the optimizer's scratch) at the step's peak, for the longest micro-batch of
the cell's data. The GPU's dtypes are those a CUDA run takes (`harness.placement` on "cuda": bf16 weights and bf16
autocast unless the config says otherwise; full fine-tuning in fp32 master weights). Not in these parts: the
CUDA context (~0.5 GiB) and the allocator's fragmentation, which `fits` leaves room for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from torch._subclasses.fake_tensor import DataDependentOutputException

from harness import models
from harness.config import resolved
from harness.plan.trace import StepTrace
from harness.recipe import Recipe
from harness.train import matrix_parameters

GIB = 2**30


@dataclass(frozen=True)
class Batch:
    """The micro-batch the peak is measured on: `rows` x `length` tokens (packed: one row of the examples'
    total), with `examples` examples in it."""

    rows: int
    length: int
    examples: int
    packed: bool


@dataclass
class MemoryEstimate:
    frozen_weights: int
    trainable_weights: int
    gradients: int
    optimizer: int
    buffers: int                # fixed tensors that are not weights (sparse masks' indices, rotary tables)
    activations: int
    phase: str                  # where the peak came: forward, backward or optimizer ("" when not traced)
    phase_peaks: dict           # phase -> (dynamic bytes, of which gradients) at that phase's highest
    trainable: int              # parameters
    frozen: int
    matrix_params: int          # weights of the linear layers: the N of the FLOPs per token (harness.throughput)
    layers: int                 # decoder / encoder layers (FSDP2's units)
    batch: Batch
    checkpointing: bool
    weights_dtype: str
    compute: str
    untraced: str | None = None  # why the step could not be traced (then activations and gradients are 0)

    @property
    def total(self) -> int:
        return (self.frozen_weights + self.trainable_weights + self.gradients + self.optimizer + self.buffers
                + self.activations)

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _fake_parameters(model: nn.Module, mode, trainable_dtype: torch.dtype) -> None:
    """Every meta parameter and buffer of `model` as a fake CPU tensor of the same shape (a trainable floating
    parameter in `trainable_dtype`: the run's fp32 master weights); tied weights stay tied."""
    made: dict[int, torch.Tensor] = {}
    cpu = torch.device("cpu")

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            source = t.to(trainable_dtype) if t.requires_grad and t.is_floating_point() else t
            if source.device.type == "meta":
                f = mode.fake_tensor_converter.from_meta_and_device(mode, source, cpu)
            else:  # (a tensor a module or method made on the CPU, as a model built on meta may keep some)
                f = mode.from_tensor(source)
            made[id(t)] = nn.Parameter(f, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else f
        return made[id(t)]

    for module in model.modules():
        for store in (module._parameters, module._buffers):  # (assigned in place: nn.Module.to would swap tensors)
            for key, value in list(store.items()):
                if value is not None:
                    store[key] = fake(value)


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _inputs(batch: Batch, head: dict | None, config) -> dict:
    """The micro-batch as the model takes it: token ids and labels for a causal LM (packed: one row whose
    positions restart per example), a class label per row for a sequence classifier (GLUE: padded rows), images
    of the model's size for an image classifier."""
    labels = torch.zeros(batch.rows, dtype=torch.float32 if (head or {}).get("num_labels") == 1 else torch.long)
    if (head or {}).get("kind") in models.IMAGE_HEADS:
        size = int(getattr(config, "image_size", 224))
        channels = int(getattr(config, "num_channels", 3))
        return {"pixel_values": torch.zeros(batch.rows, channels, size, size), "labels": labels}
    ids = torch.zeros(batch.rows, batch.length, dtype=torch.long)
    if head:
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    inputs = {"input_ids": ids, "labels": ids.clone()}
    if batch.packed:  # one row of `examples` examples: positions restart per example, as the packing collator's
        per = -(-batch.length // batch.examples)
        inputs["position_ids"] = (torch.arange(batch.length) % per).unsqueeze(0)
    else:
        inputs["attention_mask"] = torch.ones_like(ids)
    return inputs


def estimate(cfg, batch: Batch, micro_batches: int = 1, device: str = "cuda") -> MemoryEstimate:
    """The cell's peak training memory on a GPU for `batch`; `micro_batches` > 1: the step accumulates, so a
    micro-batch's gradients are live while the next one computes (two are traced). `device`: whose dtypes
    (`harness.placement`): a GPU's, or "cpu" (fp32, no autocast) to compare with a step measured here."""
    key = json.dumps([_cell_key(cfg), asdict(batch), min(micro_batches, 2), device], sort_keys=True, default=str)
    return _estimate(key, cfg, batch, min(micro_batches, 2), device)


def _cell_key(cfg) -> list:
    """What the traced step depends on besides the batch: the model, the method and its budget, the precision,
    checkpointing, and the task (its head: GLUE's sets differ in their labels)."""
    data = resolved(cfg)
    return [data["model"], data["method"], data.get("budget"), data["training"].get("precision"),
            data["training"].get("gradient_checkpointing"), data["task"]]


_ESTIMATES: dict[str, MemoryEstimate] = {}  # (a grid repeats a model and method over seeds and tasks)


def _estimate(key: str, cfg, batch: Batch, micro_batches: int, device: str) -> MemoryEstimate:
    if key in _ESTIMATES:
        return _ESTIMATES[key]
    model, placement, mode, head = _planned_model(cfg, device)
    checkpointing = bool(cfg.training.get("gradient_checkpointing"))
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    untraced = None
    with mode:
        try:
            trace, states, held_grads = _traced_step(model, placement, _inputs(batch, head, model.config),
                                                     micro_batches > 1, checkpointing)
        except DataDependentOutputException as exc:  # a forward that reads values (ReFT's positions from lengths)
            untraced = f"its forward reads the batch's values ({exc.func}), which fake tensors do not have"
            trace, states, held_grads = StepTrace(), _moments_only(trained), []
    estimate = MemoryEstimate(
        frozen_weights=_bytes(frozen), trainable_weights=_bytes(trained),
        gradients=_bytes(held_grads) + trace.peak.gradients, optimizer=_bytes(states), buffers=_bytes(model.buffers()),
        activations=trace.peak.activations, phase=trace.peak.phase,
        phase_peaks={k: (v.total, v.gradients) for k, v in trace.peaks.items()},
        trainable=sum(p.numel() for p in {id(p): p for p in trained}.values()),
        frozen=sum(p.numel() for p in {id(p): p for p in frozen}.values()), batch=batch,
        matrix_params=matrix_parameters(model), layers=int(getattr(model.config, "num_hidden_layers", 1) or 1),
        checkpointing=checkpointing, weights_dtype=str(placement.weights).removeprefix("torch."),
        compute=placement.compute, untraced=untraced)
    _ESTIMATES[key] = estimate
    return estimate


def _moments_only(trained: list) -> list:
    """AdamW's two fp32 moments per trained parameter, as fake tensors (for a step that could not be traced)."""
    return [torch.empty(p.shape, dtype=torch.float32) for p in trained for _ in range(2)]


def _planned_model(cfg, device: str):
    """(model of fake tensors, placement, its FakeTensorMode, the task's head): the cell's model and method as a
    run on `device` would hold them, with what the method's set-up builds from data (`Method.planned_setup`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    recipe = Recipe(cfg)
    placement = recipe.placement_on(device)
    model_cfg = resolved(cfg)["model"]
    # a hub model from the shapes it declares (nothing fetched); the others from their own config
    declared = model_cfg.get("source") == "hub" and bool(model_cfg.get("shapes"))
    meta = models.empty_model(model_cfg, recipe.head, declared_shapes=declared).to(placement.weights)
    adapted = recipe.planned_structure(meta)
    # non-fake inputs allowed: a method may keep a small tensor as a plain attribute (FourierFT's spectral indices)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fake_parameters(adapted.model, mode, torch.float32)
    return adapted.model, placement, mode, recipe.head


def _traced_step(model, placement, inputs: dict, accumulating: bool, checkpointing: bool):
    """(trace, optimizer moments, gradients held before the step) of one micro-batch's forward and backward and
    the optimizer step, in the steady state: the moments exist, and when the step accumulates the gradients of
    the micro-batch before are live (the backward adds to them in place)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    # foreach: the implementation CUDA picks by default, with its scratch lists
    optimizer = torch.optim.AdamW(trained, lr=1e-4, foreach=True) if trained else None
    for p in trained:  # the moments, made by a step on zero gradients (no forward pass needed)
        p.grad = torch.zeros_like(p)
    if optimizer:
        optimizer.step()
    if not accumulating:
        for p in trained:
            p.grad = None
    states = [t for s in (optimizer.state.values() if optimizer else ()) for t in s.values() if torch.is_tensor(t)]
    held_grads = [p.grad for p in trained if p.grad is not None]
    trace = StepTrace([*model.parameters(), *model.buffers(), *states, *held_grads, *inputs.values()])
    hooks = [p.register_post_accumulate_grad_hook(lambda p: trace.mark_gradient(p.grad)) for p in trained]
    with trace:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=placement.compute == "bf16"):
            loss = model(**inputs).loss
        trace.phase = "backward"
        loss.backward()
        del loss
        trace.phase = "optimizer"
        if optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for hook in hooks:
        hook.remove()
    return trace, states, held_grads
