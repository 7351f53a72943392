"""MiLoRA: LoRA initialised on the r *smallest* singular components; the rest stays frozen as the residual.

peft has no MiLoRA init (its "mica" init is a different method: B from minor components, A = 0), so it is
written here as an initialisation applied to a plain peft LoRA adapter. With W0 = U S V^T and the last r
components (U_r, S_r, V_r): B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T, W_res = W0 - s B A, where s is the
LoRA scaling; s B A = U_r S_r V_r^T exactly, for any alpha.
"""

from __future__ import annotations

import torch

from harness.methods.base import MethodConfigError, check_options, svd_components
from harness.methods.lora import LORA_OPTIONS, ResidualInitLoRA, lora_config, wrap
from harness.methods.registry import register


@torch.no_grad()
def milora_init_layer(layer, adapter_name: str = "default") -> None:
    """Re-initialises one peft LoraLayer's adapter from the minor singular components of its base weight."""
    from peft.utils.other import transpose

    base = layer.get_base_layer()
    weight = transpose(base.weight, layer.fan_in_fan_out)  # [d_out, d_in]
    r, scale = layer.r[adapter_name], layer.scaling[adapter_name]
    if r > min(weight.shape):
        raise MethodConfigError(f"MiLoRA rank r={r} exceeds min(d_out, d_in)={min(weight.shape)} for a {tuple(weight.shape)} weight")
    U, S, Vh = svd_components(weight)
    sqrt_s = torch.sqrt(S[-r:] / scale)
    lora_A = sqrt_s[:, None] * Vh[-r:]          # [r, d_in]
    lora_B = U[:, -r:] * sqrt_s[None, :]        # [d_out, r]
    A, B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    A.data = lora_A.to(A.dtype).contiguous()  # (an SVD's factors are column-major)
    B.data = lora_B.to(B.dtype).contiguous()
    residual = weight.float() - scale * (lora_B @ lora_A)
    base.weight.data = transpose(residual.to(base.weight.dtype), layer.fan_in_fan_out).contiguous()


@register("milora")
class MiLoRA(ResidualInitLoRA):
    label, display_order = "MiLoRA", 4

    def apply(self, model, **options):
        from peft.tuners.lora import LoraLayer

        check_options(self.name, options, LORA_OPTIONS)
        peft_model = wrap(model, lora_config(self.name, options, init_lora_weights=True))
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                for adapter_name in module.lora_A:
                    milora_init_layer(module, adapter_name)
        self.remember_initial_adapter(peft_model)
        return peft_model
