"""EVA (`init_lora_weights: eva`) for method=peft: the adapter initialised from the training batches before the
optimizer exists (`initialize_lora_eva_weights`, peft's documented call after `get_peft_model`)."""

from __future__ import annotations

import torch

from harness.methods.base import MethodConfigError
from harness.methods.peft_tuner.extension import OnDevice, TunerExtension


def svd_rows(batch, eva_config) -> int:
    """The rows a batch gives EVA's SVD: its tokens, less padding and (peft's default label mask) those without a
    label, as peft's `prepare_model_inputs_fn_language_modeling` selects them."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    if eva_config.use_label_mask and "labels" in batch:
        mask = mask & (batch["labels"] != eva_config.label_mask_value)
    return int(mask.sum())


def check_batches(loader, config) -> None:
    """peft's EVA cycles over the batches until every layer's r x rho components converge and skips a batch with
    fewer SVD rows than that: with no batch large enough it cycles for ever (a tiny micro-batch of short answers,
    with the label mask). Refused here instead, in one line."""
    eva = config.eva_config
    needed = round(config.r * eva.rho)
    largest = 0
    for batch in loader:
        largest = max(largest, svd_rows(batch, eva))
        if largest >= needed:
            return
    raise MethodConfigError(
        f"method=eva: no training micro-batch has the {needed} rows EVA's SVD needs (r x rho = {config.r} x "
        f"{eva.rho:g}); the largest has {largest}{' labelled' if eva.use_label_mask else ''} tokens, and peft would "
        "cycle over the batches for ever",
        "raise training.micro_batch_size, lower method.config.r or eva_config.rho, or set "
        "method.config.eva_config.use_label_mask=false")


class EvaInit(TunerExtension):
    init, init_config_field = "eva", "eva_config"

    def before_training(self, adapted, context):
        from peft import initialize_lora_eva_weights

        check_batches(context["loader"], adapted.model.peft_config["default"])
        with torch.no_grad():
            initialize_lora_eva_weights(adapted.model, dataloader=OnDevice(context["loader"], context["device"]),
                                        show_progress_bar=False)
