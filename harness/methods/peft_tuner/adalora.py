"""AdaLoRA for method=peft: it learns the run's step count before training (`total_step`, a provisional value until
then) and reallocates its ranks after every optimizer step (`update_and_allocate`, before the gradients are
cleared), unless `method.update_ranks=false` (LoRA-GA's baselines: never reallocated); `method.e_init_std` draws
its E from N(0, std), as peft 0.10 did."""

from __future__ import annotations

import torch

from harness.methods.base import MethodConfigError
from harness.methods.peft_tuner.extension import TunerExtension


class AdaLoraAllocation(TunerExtension):
    peft_type = "ADALORA"
    # options of the harness's, not of the tuner's config: whether its ranks are reallocated while it trains, and
    # peft 0.10's N(0, std) init of its singular values E, which LoRA-GA's baselines ran with
    options = ("update_ranks", "e_init_std")

    def config_fields(self, fields):
        if fields["peft_type"] == self.peft_type and not fields.get("total_step"):
            # the run's step count is known only when training starts (`before_training`); until then the smallest
            # count AdaLoRA's schedule accepts
            fields["total_step"] = int(fields.get("tinit") or 0) + int(fields.get("tfinal") or 0) + 1

    def after_apply(self, model, config, state, options):
        # AdaLoRA's `ranknum` is a constant (the rank) that peft leaves trainable when the model is on the meta
        # device: frozen here, so that the budget solver counts what the real model trains
        for name, parameter in model.named_parameters():
            if ".ranknum." in name:
                parameter.requires_grad_(False)
        if options.e_init_std:
            # peft <= 0.10 drew E ~ N(0, 0.02) (adalora/layer.py L76 at v0.10.0), the version LoRA-GA's
            # reproduce/requirements.txt pins; peft 0.21 starts E at zero (the output then starts unchanged)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if ".lora_E." in name:
                        parameter.normal_(0.0, float(options.e_init_std))

    def before_training(self, adapted, context):
        model, options = adapted.model, adapted.options
        config = model.peft_config[model.active_adapter]
        total = int(context["total_steps"])
        allocates = options.update_ranks
        # (the last allocation step prunes by the importance the steps before it measured: at least one)
        if allocates and config.tinit + 1 >= total - config.tfinal:
            raise MethodConfigError(f"method=peft type=ADALORA: tinit={config.tinit} + tfinal={config.tfinal} "
                                    f"leave fewer than two steps of rank allocation in this run's {total} steps")
        model.base_model.rankallocator.set_total_step(total)

    def after_optimizer_step(self, adapted, step):
        # `update_ranks=false`: AdaLoRA at its initial ranks throughout, as LoRA-GA's Trainer ran it (no file of
        # its reproduce/ calls update_and_allocate)
        if adapted.options.update_ranks:
            adapted.model.base_model.update_and_allocate(step)
