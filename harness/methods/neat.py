"""Neat: peft's PEANuT (dW from the frozen weight through a small non-linear network).

Two conventions exist. peft's PEANuT: dW^T = B(act(W0^T A^T)), A: d_out -> r, 2*r*d_out parameters.
The Neat paper's LLM code: dW = act(W0 Th1) Th2 with Th1 [d_in, r] and Th2 [r, d_in], 2*r*d_in parameters.
peft ships only the first; the second is the same peft layer with the projections on the input side
(`InputSidePeanutLinear`). Both compute the forward from two thin factors instead of peft's dense delta weight
(`_output_side_class`, `_input_side_class`); merging and saving stay peft's.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.methods.base import Method, infer_task_type
from harness.methods.options import HeadOptions, listed, one_of, positive_int
from harness.methods.registry import register


class Sin2Pi(nn.Module):
    """sigma(x) = sin(2 pi x), the periodic activation of Neat's Table 5 ablation (ReLU is the default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * math.pi * x)


def _register_activations() -> None:
    """Adds Neat's sinusoidal activation to transformers' activation table under the name `sin2pi`, the table
    peft's PEANuT reads its `act_fn` from (its config accepts only names there): the saved adapter_config.json
    names it, and peft's own layer computes it once the harness is imported."""
    from transformers.activations import ACT2FN

    if "sin2pi" not in ACT2FN:
        ACT2FN["sin2pi"] = Sin2Pi


CONVENTIONS = ("d_out", "d_in")  # peft's PEANuT; the paper's LLM code


@dataclass(frozen=True, kw_only=True)
class NeatOptions(HeadOptions):
    """Neat's options (conf/method/neat.yaml sets r, scaling, depth, act_fn and convention)."""

    r: int
    scaling: float
    depth: int          # peft's: hidden layers between A and B (Neat's code counts 2 * depth + 2)
    act_fn: str         # a transformers activation name, or sin2pi
    convention: str     # d_out (peft) or d_in (the paper's LLM code)
    target_modules: list[str] | None = None
    layers_to_transform: list[int] | None = None
    task_type: str | None = None

    def check(self, method: str) -> None:
        positive_int(method, "r", self.r)
        one_of(method, "convention", self.convention, CONVENTIONS)


CONVENTION_FILE = "harness_neat.json"


def _as_adapter_dtype(base_weight: torch.Tensor, adapter_weight: torch.Tensor) -> torch.Tensor:
    """W0 for the product with A: in A's dtype, except under autocast, which computes the product in bf16
    anyway. There a cast of bf16 W0 to fp32 A's dtype would be a full fp32 copy of every adapted matrix that
    autocast casts back (bf16 -> fp32 -> bf16 is exact: the same product), saved for the backward pass: 10 GB
    at LLaMA-2-7B r=32, micro-batch 4 (harness.plan's trace), 1.45x LoRA's peak."""
    if torch.is_autocast_enabled(base_weight.device.type):
        return base_weight
    return base_weight.to(adapter_weight.dtype)


@functools.lru_cache(maxsize=None)
def _output_side_class():
    """peft's PEANuT layer with a forward that never forms the dense delta weight (peft's does: a d_out x d_in
    matrix per layer and step, 2.01x LoRA's memory at LLaMA-2-7B r=32), as Neat's own ViT / NLU code computes
    it: x @ dW^T = (x @ left) @ right with two thin factors, for both conventions. Merging, saving and the
    parameters stay peft's; `_compute_delta_weight` (merge) is the product of the same factors."""
    from peft.tuners.peanut.layer import Linear as PeanutLinear
    from transformers.activations import ACT2FN

    class FactoredPeanutLinear(PeanutLinear):
        """peft's convention: dW^T = s * net(act(W0^T A^T)) B^T, A / B over d_out; left = net(act(W0^T A^T))
        [d_in, r], right = s * B^T [r, d_out]."""

        def _network(self, adapter: str, h: torch.Tensor) -> torch.Tensor:
            # the optional depth: encoders, then decoders with residuals (peft's PEANuT layer)
            act = ACT2FN[self.act_fn[adapter]]
            residuals = []
            for encoder in self.peanut_encoders[adapter]:
                residuals.append(h)
                h = act(encoder(h))
            for i, decoder in enumerate(self.peanut_decoders[adapter]):
                h = act(decoder(h)) + residuals[len(residuals) - 1 - i]
            return h

        def _factors(self, adapter: str, base_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            A, B = self.peanut_A[adapter], self.peanut_B[adapter]
            act = ACT2FN[self.act_fn[adapter]]
            left = self._network(adapter, act(_as_adapter_dtype(base_weight, A.weight).t() @ A.weight.t()))
            return left, B.weight.t() * self.scaling[adapter]

        def _compute_delta_weight(self, adapter: str, base_weight: torch.Tensor) -> torch.Tensor:
            left, right = self._factors(adapter, base_weight)
            return (left @ right).t()  # [d_out, d_in]

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if self.disable_adapters or self.merged or not self.active_adapters:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            result_dtype = result.dtype
            for adapter in self.active_adapters:
                if adapter not in self.peanut_A:
                    continue
                left, right = self._factors(adapter, self.get_base_layer().weight)
                result = result + ((self._cast_input_dtype(x, left.dtype) @ left) @ right).to(result_dtype)
            return result

    return FactoredPeanutLinear


@functools.lru_cache(maxsize=None)
def _input_side_class():
    """The factored layer for the paper's input-side convention (built, as its parent, once peft is imported)."""
    from transformers.activations import ACT2FN

    FactoredPeanutLinear = _output_side_class()

    class InputSidePeanutLinear(FactoredPeanutLinear):
        """The Neat paper's LLM convention: dW = s * net(act(W0 A^T)) B^T, A / B over d_in; left = s * B
        [d_in, r], right = net(act(W0 A^T))^T [r, d_out]."""

        def _factors(self, adapter: str, base_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            A, B = self.peanut_A[adapter], self.peanut_B[adapter]
            act = ACT2FN[self.act_fn[adapter]]
            h = self._network(adapter, act(_as_adapter_dtype(base_weight, A.weight) @ A.weight.t()))  # [d_out, r]
            return B.weight * self.scaling[adapter], h.t()

        def to_input_side(self, adapter: str) -> None:
            r, device = self.r[adapter], self.peanut_A[adapter].weight.device
            dtype = self.peanut_A[adapter].weight.dtype
            self.peanut_A[adapter] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
            self.peanut_B[adapter] = nn.Linear(r, self.in_features, bias=False, device=device, dtype=dtype)
            nn.init.kaiming_uniform_(self.peanut_A[adapter].weight, a=math.sqrt(5))
            nn.init.zeros_(self.peanut_B[adapter].weight)

    return InputSidePeanutLinear


def _factored(peft_model, convention: str):
    """Gives every PEANuT layer of `peft_model` the factored forward (and the input-side projections for the
    paper's convention, freshly initialised: `apply` only)."""
    from peft.tuners.peanut.layer import Linear as PeanutLinear

    output_side, input_side = _output_side_class(), _input_side_class()
    for module in peft_model.modules():
        if type(module) is PeanutLinear:
            module.__class__ = input_side if convention == "d_in" else output_side
            if convention == "d_in":
                for adapter in list(module.peanut_A):
                    module.to_input_side(adapter)
    return peft_model


def _peanut_config(options: NeatOptions):
    from peft import PeanutConfig

    _register_activations()

    return PeanutConfig(
        r=options.r,
        depth=int(options.depth),
        act_fn=str(options.act_fn),
        scaling=float(options.scaling),
        target_modules=listed(options.target_modules),
        modules_to_save=listed(options.modules_to_save),
        layers_to_transform=listed(options.layers_to_transform),
        task_type=options.task_type,
    )


@register("neat")
class Neat(Method):
    options_class = NeatOptions
    budget_knob = "r"
    # 2: the factored forward (the same function, other rounding than peft's dense delta weight)
    behaviour_version = 2

    def knob_label(self, options):
        # the depth as Neat's official code counts it (A and B included): peft's depth d is 2d + 2 there
        extra = [f"depth={2 * int(options.depth) + 2}" if options.depth else "",
                 f"act={options.act_fn}" if options.act_fn not in (None, "relu") else ""]
        return " ".join(part for part in [super().knob_label(options), *extra] if part)

    def count(self, shapes, options):
        r, depth = int(options.r), int(options.depth)
        side = 1 if options.convention == "d_out" else 0
        return sum(2 * r * shape[1 - side] + 2 * depth * r * r for shape in shapes)

    def apply(self, model, state, options):
        from peft import get_peft_model

        convention = options.convention
        config = _peanut_config(options)
        if config.task_type is None:
            config.task_type = infer_task_type(model)
        peft_model = _factored(get_peft_model(model, config), convention)
        if convention == "d_in":
            peft_model.set_adapter(peft_model.active_adapter)  # marks the new projections trainable
        return peft_model

    def save(self, adapted, directory: Path) -> None:
        adapted.model.save_pretrained(directory)
        convention = adapted.options.convention
        (Path(directory) / CONVENTION_FILE).write_text(json.dumps({"convention": convention}))

    def load(self, base_model, directory, options, state):
        from peft import PeftModel
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        _register_activations()
        directory = Path(directory)
        marker = directory / CONVENTION_FILE
        convention = json.loads(marker.read_text())["convention"] if marker.exists() else "d_out"
        if convention == "d_out":
            return _factored(PeftModel.from_pretrained(base_model, str(directory)), "d_out")
        # peft's loader would build d_out-shaped projections; build the d_in layers, then load the weights.
        model = self.apply(base_model, state, options.replace(convention="d_in"))
        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        return model
