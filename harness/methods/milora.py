"""MiLoRA: LoRA initialised on the r *smallest* singular components; the rest stays frozen as the residual.

peft has no MiLoRA init (its "mica" init is a different method: B from minor components, A = 0), so it is
written here as an initialisation applied to a plain peft LoRA adapter. With W0 = U S V^T and the last r
components (U_r, S_r, V_r): B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T, W_res = W0 - s B A, where s is the
LoRA scaling; s B A = U_r S_r V_r^T exactly, for any alpha.

`components` picks which r components (MiLoRA Table 6, the official svd_init.py's "min" / "max" modes and the
paper's random control): `minor` (MiLoRA, the default), `principal` (the r largest: PiSSA's components with
MiLoRA's scaling and recipe) or `random` (r components drawn uniformly without replacement, per matrix, from a
generator seeded by `components_seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.methods.base import MethodConfigError, svd_components
from harness.methods.lora import LoraOptions, ResidualInitLoRA, lora_config, wrap
from harness.methods.options import one_of
from harness.methods.registry import register


COMPONENTS = ("minor", "principal", "random")


@dataclass(frozen=True, kw_only=True)
class MiloraOptions(LoraOptions):
    components: str = "minor"   # which r singular components: minor (MiLoRA), principal, random
    components_seed: int = 0    # the generator of `random`

    def check(self, method: str) -> None:
        super().check(method)
        one_of(method, "components", self.components, COMPONENTS)


def chosen_components(k: int, r: int, components: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the r singular components (of k, in descending order of singular value) to adapt."""
    if components == "minor":
        return torch.arange(k - r, k)
    if components == "principal":
        return torch.arange(r)
    return torch.randperm(k, generator=generator)[:r].sort().values


@torch.no_grad()
def milora_init_layer(layer, adapter_name: str = "default", components: str = "minor",
                      generator: torch.Generator | None = None) -> None:
    """Re-initialises one peft LoraLayer's adapter from the chosen singular components of its base weight (the
    minor ones for MiLoRA)."""
    from peft.utils.other import transpose

    base = layer.get_base_layer()
    weight = transpose(base.weight, layer.fan_in_fan_out)  # [d_out, d_in]
    r, scale = layer.r[adapter_name], layer.scaling[adapter_name]
    if r > min(weight.shape):
        raise MethodConfigError(f"MiLoRA rank r={r} exceeds min(d_out, d_in)={min(weight.shape)} for a {tuple(weight.shape)} weight")
    U, S, Vh = svd_components(weight)
    picked = chosen_components(S.shape[0], r, components, generator)
    sqrt_s = torch.sqrt(S[picked] / scale)
    lora_A = sqrt_s[:, None] * Vh[picked]       # [r, d_in]
    lora_B = U[:, picked] * sqrt_s[None, :]     # [d_out, r]
    A, B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    A.data = lora_A.to(A.dtype).contiguous()  # (an SVD's factors are column-major)
    B.data = lora_B.to(B.dtype).contiguous()
    residual = weight.float() - scale * (lora_B @ lora_A)
    base.weight.data = transpose(residual.to(base.weight.dtype), layer.fan_in_fan_out).contiguous()


@register("milora")
class MiLoRA(ResidualInitLoRA):
    options_class = MiloraOptions

    def knob_label(self, options):
        label = super().knob_label(options)
        return label if options.components in (None, "minor") else f"{label} {options.components}"

    def apply(self, model, state, options):
        from peft.tuners.lora import LoraLayer

        components = options.components
        peft_model = wrap(model, lora_config(options, init_lora_weights=True))
        # (the layers in module order: the same draw every time)
        generator = torch.Generator().manual_seed(int(options.components_seed or 0))
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for adapter_name in module.lora_A:
                    milora_init_layer(module, adapter_name, components, generator)
        self.remember_initial_adapter(peft_model, state)
        return peft_model
