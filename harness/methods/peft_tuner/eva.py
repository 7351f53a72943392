"""EVA (`init_lora_weights: eva`) for method=peft: the adapter initialised from the training batches before the
optimizer exists (`initialize_lora_eva_weights`, peft's documented call after `get_peft_model`)."""

from __future__ import annotations

import torch

from harness.methods.peft_tuner.extension import OnDevice, TunerExtension


class EvaInit(TunerExtension):
    init, init_config_field = "eva", "eva_config"

    def before_training(self, adapted, context):
        from peft import initialize_lora_eva_weights

        with torch.no_grad():
            initialize_lora_eva_weights(adapted.model, dataloader=OnDevice(context["loader"], context["device"]),
                                        show_progress_bar=False)
