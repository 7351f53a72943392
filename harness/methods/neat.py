"""Neat: peft's PEANuT (dW from the frozen weight through a small non-linear network).

Two conventions exist. peft's PEANuT: dW^T = B(act(W0^T A^T)), A: d_out -> r, 2*r*d_out parameters.
The Neat paper's LLM code: dW = act(W0 Th1) Th2 with Th1 [d_in, r] and Th2 [r, d_in], 2*r*d_in parameters.
peft ships only the first; the second is the same peft layer with the projections on the input side, which
`InputSidePeanutLinear` provides by overriding the delta-weight computation (forward, merge and saving stay
peft's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from harness.methods.base import Method, MethodConfigError, check_options, infer_task_type, require_positive_int
from harness.methods.registry import register

NEAT_OPTIONS = {"r", "scaling", "depth", "act_fn", "convention", "target_modules", "layers_to_transform", "task_type",
                "modules_to_save"}
CONVENTION_FILE = "harness_neat.json"


def _input_side_linear_class():
    from peft.tuners.peanut.layer import Linear as PeanutLinear
    from transformers.activations import ACT2FN

    class InputSidePeanutLinear(PeanutLinear):
        """PEANuT with the paper's LLM convention: dW = act(W0 @ A^T) -> depth layers -> B, A/B over d_in."""

        def _compute_delta_weight(self, adapter: str, base_weight: torch.Tensor) -> torch.Tensor:
            A, B = self.peanut_A[adapter], self.peanut_B[adapter]
            act = ACT2FN[self.act_fn[adapter]]
            h = act(base_weight.to(A.weight.dtype) @ A.weight.t())  # [d_out, r]
            residuals = []
            for encoder in self.peanut_encoders[adapter]:
                residuals.append(h)
                h = act(encoder(h))
            for i, decoder in enumerate(self.peanut_decoders[adapter]):
                h = act(decoder(h)) + residuals[len(residuals) - 1 - i]
            return B(h) * self.scaling[adapter]  # [d_out, d_in]

        def to_input_side(self, adapter: str) -> None:
            r, device = self.r[adapter], self.peanut_A[adapter].weight.device
            dtype = self.peanut_A[adapter].weight.dtype
            self.peanut_A[adapter] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
            self.peanut_B[adapter] = nn.Linear(r, self.in_features, bias=False, device=device, dtype=dtype)
            nn.init.kaiming_uniform_(self.peanut_A[adapter].weight, a=math.sqrt(5))
            nn.init.zeros_(self.peanut_B[adapter].weight)

    return InputSidePeanutLinear


def _peanut_config(options: dict):
    from peft import PeanutConfig

    return PeanutConfig(
        r=require_positive_int("neat", "r", options.get("r", 8)),
        depth=int(options.get("depth", 0)),
        act_fn=str(options.get("act_fn", "relu")),
        scaling=float(options.get("scaling", 1.0)),
        target_modules=list(options["target_modules"]) if options.get("target_modules") else None,
        modules_to_save=list(options["modules_to_save"]) if options.get("modules_to_save") else None,
        layers_to_transform=list(options["layers_to_transform"]) if options.get("layers_to_transform") else None,
        task_type=options.get("task_type"),
    )


@register("neat")
class Neat(Method):
    label, display_order = "Neat", 5
    budget_knob = "r"

    def count(self, shapes, options):
        r, depth = int(options["r"]), int(options.get("depth", 0))
        side = 1 if options.get("convention", "d_out") == "d_out" else 0
        return sum(2 * r * shape[1 - side] + 2 * depth * r * r for shape in shapes)
    def apply(self, model, **options):
        from peft import get_peft_model
        from peft.tuners.peanut.layer import Linear as PeanutLinear

        check_options(self.name, options, NEAT_OPTIONS)
        convention = options.get("convention", "d_out")
        if convention not in ("d_out", "d_in"):
            raise MethodConfigError(f"method=neat: convention must be d_out (peft) or d_in (paper LLM code), got {convention!r}")
        config = _peanut_config(options)
        if config.task_type is None:
            config.task_type = infer_task_type(model)
        peft_model = get_peft_model(model, config)
        if convention == "d_in":
            input_side = _input_side_linear_class()
            for module in peft_model.modules():
                if type(module) is PeanutLinear:
                    module.__class__ = input_side
                    for adapter in list(module.peanut_A):
                        module.to_input_side(adapter)
            peft_model.set_adapter(peft_model.active_adapter)  # marks the new projections trainable
        peft_model._harness_neat_convention = convention
        return peft_model

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)
        convention = getattr(model, "_harness_neat_convention", "d_out")
        (Path(directory) / CONVENTION_FILE).write_text(json.dumps({"convention": convention}))

    def load(self, base_model, directory, options):
        from peft import PeftModel
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        marker = directory / CONVENTION_FILE
        convention = json.loads(marker.read_text())["convention"] if marker.exists() else "d_out"
        if convention == "d_out":
            return PeftModel.from_pretrained(base_model, str(directory))
        # peft's loader would build d_out-shaped projections; build the d_in layers, then load the weights.
        model = self.apply(base_model, **{**options, "convention": "d_in"})
        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        return model
