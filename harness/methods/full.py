"""Full fine-tuning: every parameter trains; nothing to merge."""

from __future__ import annotations

from harness.methods.base import Method
from harness.methods.registry import register


@register("full")
class FullFineTuning(Method):
    trains_all_weights = True

    def with_head(self, options, head_modules):
        return options  # the head trains with everything else

    # options_class: the base `Options`, with none (the head trains with everything else)

    def apply(self, model, state, options):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base_model, directory, options, state):
        # the saved model is the whole model with the base model's class (a causal LM, or a classifier)
        return type(base_model).from_pretrained(str(directory))
