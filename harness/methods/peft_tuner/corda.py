"""CorDA (`init_lora_weights: corda`) for method=peft: the adapter initialised from the input covariance of the
first `method.init_batches` training micro-batches (peft's `preprocess_corda` on a view of the base layers, then
`corda_init`). The covariance exists only once the data has run, so peft builds the adapter with its plain init
and the CorDA config waits in the run's state (`CORDA_PENDING`) until `before_training`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.methods.lora import remember_initial_adapter
from harness.methods.peft_tuner.extension import OnDevice, TunerExtension

CORDA_PENDING = "corda_config"  # the run state's key: CorDA's config, until `before_training` has the data


class CordaInit(TunerExtension):
    init, init_config_field, rewrites_base_weights = "corda", "corda_config", True
    options = ("init_batches",)

    def matches(self, config, state):
        # at apply, a CorDA config; from then on, the run whose CorDA config is pending (its config's init is
        # peft's plain one by then)
        if state.get(CORDA_PENDING) is not None:
            return True
        return super().matches(config, state) and getattr(config, "corda_config", None) is not None

    def before_apply(self, config):
        # CorDA's init needs the layers' input covariance, which exists only once the data has run
        # (`before_training`): the adapter is built with peft's plain init and the CorDA config kept for then
        config.init_lora_weights = True

    def after_apply(self, model, config, state, options):
        state[CORDA_PENDING] = config.corda_config

    def before_training(self, adapted, context):
        init_from_covariance(adapted, context)


def init_from_covariance(adapted, context) -> None:
    """CorDA (Yang et al. 2024): each adapter from the SVD of W C, C the covariance of the layer's inputs on the
    first `method.init_batches` training micro-batches (ipm: the components the data uses most; kpm: the least,
    keeping the rest of the model's knowledge). peft's `preprocess_corda` runs before the adapter exists and looks
    for the plain linear layers by name, so it is given a view of the base layers under their original names
    (the same modules, hooked while the adapted model runs with its adapters off); peft's `corda_init` then
    sets A, B and the residual of every layer."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.corda import preprocess_corda

    model, options = adapted.model, adapted.options
    corda = adapted.state.pop(CORDA_PENDING)
    config = copy.copy(model.peft_config[model.active_adapter])
    config.init_lora_weights, config.corda_config = "corda", corda
    view = nn.Module()  # the base layers, under the names the unadapted model gives them
    layers = [(name, m) for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        parent = view
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, layer.get_base_layer())
    batches = int(options.init_batches)

    def run_model():
        was_training = model.training
        model.eval()
        with model.disable_adapter(), torch.no_grad():
            for i, batch in enumerate(OnDevice(context["loader"], context["device"])):
                if i >= batches:
                    break
                if batch["input_ids"].shape[0] == 1:  # (a packed micro-batch is one row)
                    model(**batch)
                    continue
                # peft's covariance hook takes one sequence per forward: each row without its padding
                mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
                for ids, keep in zip(batch["input_ids"], mask):
                    model(input_ids=ids[keep][None])
        model.train(was_training)

    preprocess_corda(view, config, run_model=run_model)
    with torch.no_grad():
        for _, layer in layers:
            layer.corda_init(model.active_adapter, "corda")
    remember_initial_adapter(model, adapted.state, "peft-corda")
