"""peft's LoRA-GA (`init_lora_weights: lora_ga`) for method=peft: the adapter initialised from the gradients of the
first `method.init_batches` training micro-batches (peft's `lora_ga_init` per layer). Not `harness.methods.lora_ga`,
the method of LoRA-GA's official code."""

from __future__ import annotations

import torch

from harness.methods.lora import remember_initial_adapter
from harness.methods.peft_tuner.extension import OnDevice, TunerExtension


class LoraGaInit(TunerExtension):
    init, init_config_field, rewrites_base_weights = "lora_ga", "lora_ga_config", True
    options = ("init_batches",)

    def before_training(self, adapted, context):
        init_from_gradients(adapted, context, int(adapted.options.init_batches))


def init_from_gradients(adapted, context, batches: int) -> None:
    """LoRA-GA (Wang et al. 2024): each adapter from the SVD of its weight's gradient on the first
    `method.init_batches` training micro-batches (8 by default). The gradients are estimated on the frozen base
    model with the adapters off, as peft's `preprocess_loraga` does before the adapter exists (it cannot run on
    an adapted model: its hooks look for the plain linear layers), then peft's own `lora_ga_init` sets A, B and
    the residual weight of every layer; the adapter as initialised is kept for the save on original weights."""
    from peft.tuners.lora import LoraLayer

    model = adapted.model
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers:
        layer.get_base_layer().weight.requires_grad_(True)
    count = 0
    was_training = model.training
    model.train()
    with model.disable_adapter(), torch.enable_grad():
        for batch in OnDevice(context["loader"], context["device"]):
            model(**batch).loss.backward()
            count += 1
            if count >= batches:
                break
    for layer in layers:
        weight = layer.get_base_layer().weight
        layer.get_base_layer()._peft_loraga_grad = weight.grad.detach() / count
        weight.grad = None
    for p in model.parameters():
        p.requires_grad_(trainable[id(p)])
    model.train(was_training)
    config = model.peft_config[model.active_adapter]
    with torch.no_grad():
        for layer in layers:
            layer.lora_ga_init(model.active_adapter, config.lora_ga_config)
    remember_initial_adapter(model, adapted.state, "peft-lora_ga")
