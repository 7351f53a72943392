"""LoRA-GA as published (Wang et al. 2024, arXiv 2407.05000): LoRA's A and B from the SVD of each weight's
gradient, both scaled for a stable output, the residual frozen.

The official code behind the paper's numbers (Outsider565/LoRA-GA @89af7de, `reproduce/`, which its README names
as such), read field by field (../shared/research/fidelity-audit-2026-12-03.md, section 2):
- the gradient: the first `init_examples` = bsz 1 x iters 8 training examples in file order, one per backward
  pass on the unadapted model, averaged (`run_exp.py` L268-298, L352-364; `conf/init/gradient.yaml`);
- the factors (`run_exp.py` L161-197, direction ArB2r, scale stable): G = U S V^T by `torch.svd_lowrank(G, q=4r,
  niter=4)`, B = U[:, r:2r] m^(1/4) / sqrt(gamma), A = V^T[:r] m^(1/4) / sqrt(gamma), m = d_out; no singular
  values enter;
- A and B cast to fp32, then W <- W - scaling B A (L199-236), so the model's output is unchanged;
- rsLoRA scaling alpha / sqrt(r) (`reproduce/Readme.md` L23-31: LoRA-GA needs `peft.use_rslora=True`).
gamma is 16 in `conf/init/gradient.yaml`; the README's example run passes `++init.stable_gamma=64`; which one the
paper ran is not in the repository (`stable_gamma`, 16 by default).

peft 0.21's `init_lora_weights="lora_ga"` is another variant (B carries the singular values S[r:2r] and only B is
scaled; the gradient from micro-batches of the shuffled loader): it stays available as `method=lora_ga_peft`
(conf/method/lora_ga_peft.yaml). peft has no call with the official factors, so they are computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.methods.base import MethodConfigError
from harness.methods.lora import LoraOptions, ResidualInitLoRA, lora_config, wrap
from harness.methods.options import positive_int
from harness.methods.registry import register


@dataclass(frozen=True, kw_only=True)
class LoraGaOptions(LoraOptions):
    """LoRA's options and the init's own (conf/method/lora_ga.yaml sets the official values)."""

    use_rslora: bool      # alpha / sqrt(r) (the official reproduce/ runs)
    stable_gamma: float   # the stable scale's gamma
    init_examples: int    # the first training examples the gradient averages
    svd_seed: int = 0     # the seed of `torch.svd_lowrank`'s random start

    def check(self, method: str) -> None:
        super().check(method)
        positive_int(method, "init_examples", self.init_examples)
        gamma = self.stable_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
            raise MethodConfigError(f"method={method}: stable_gamma must be a positive number, got {gamma!r}")

#: the power iterations of the official `torch.svd_lowrank` call
SVD_NITER = 4


def lora_ga_factors(gradient: torch.Tensor, r: int, stable_gamma: float,
                    generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, d_in], B [d_out, r]) of the official init from one weight's gradient [d_out, d_in], in fp32.

    `torch.svd_lowrank` starts from a random matrix; it is drawn here under a fixed seed (`generator_seed`) so that
    every process and every rerun takes the same factors."""
    m = gradient.shape[0]
    q = min(4 * r, min(gradient.shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        U, _, V = torch.svd_lowrank(gradient.float(), q=q, niter=SVD_NITER)
    scale = m ** 0.25 / float(stable_gamma) ** 0.5
    B = U[:, r:2 * r] * scale
    A = V.T[:r] * scale
    return A.contiguous(), B.contiguous()


@register("lora_ga")
class LoRAGA(ResidualInitLoRA):
    """The adapter is a plain peft LoRA until `before_training`, when the gradients of the first examples exist;
    saved as a rank-2r LoRA on the original weights, as PiSSA and MiLoRA."""

    options_class = LoraGaOptions
    own_label_in_run_id = True  # (conf/method/lora_ga.yaml named its label LoRA-GA before labels were display)
    init_reads_weights = False  # (its init reads gradients in `before_training`, on every process alike)
    components_per_rank = 2     # ArB2r takes the singular components r..2r: 2r must fit every adapted matrix
    behaviour_version = 1

    def apply(self, model, state, options):
        return wrap(model, lora_config(options, init_lora_weights=True, use_rslora=bool(options.use_rslora)))

    def apply_structure(self, model, state, options):
        return self.apply(model, state, options)

    def validate(self, model, options):
        self.check_rank_fits(model, options)
        self.apply(model, {}, options)

    def before_training(self, adapted, context):
        model, options = adapted.model, adapted.options
        gradients = self.gradients(model, context["loader"], context["device"], int(options.init_examples))
        self.initialise(model, gradients, float(options.stable_gamma), int(options.svd_seed))
        self.remember_initial_adapter(model, adapted.state)

    @staticmethod
    def gradients(model, loader, device, examples: int) -> dict:
        """Each adapted weight's gradient, averaged over the loader's first `examples` examples in their order
        (not the shuffled batches), one example per backward pass, on the model with its adapters off."""
        from peft.tuners.lora import LoraLayer

        layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
        first = list(loader.dataset[:examples])
        if not first:
            raise MethodConfigError("method=lora_ga: no training example to estimate the gradient from")
        trainable = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers.values():
            layer.get_base_layer().weight.requires_grad_(True)
        sums = {}
        was_training = model.training
        model.train()
        try:
            with model.disable_adapter(), torch.enable_grad():
                for example in first:
                    batch = loader.collate_fn([example])
                    model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}).loss.backward()
                    for name, layer in layers.items():
                        weight = layer.get_base_layer().weight
                        grad = weight.grad.detach().float()
                        sums[name] = grad if name not in sums else sums[name] + grad
                        weight.grad = None
        finally:
            for p in model.parameters():
                p.requires_grad_(trainable[id(p)])
            model.train(was_training)
        return {name: total / len(first) for name, total in sums.items()}

    @staticmethod
    @torch.no_grad()
    def initialise(model, gradients: dict, stable_gamma: float, svd_seed: int = 0) -> None:
        """A, B from each layer's gradient (`lora_ga_factors`, fp32) and the residual W - scaling B A."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import transpose

        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer) or name not in gradients:
                continue
            for adapter in layer.lora_A:
                base = layer.get_base_layer()
                gradient = transpose(gradients[name], layer.fan_in_fan_out)  # [d_out, d_in]
                A, B = lora_ga_factors(gradient, layer.r[adapter], stable_gamma, svd_seed)
                layer.lora_A[adapter].weight.data = A.to(torch.float32)
                layer.lora_B[adapter].weight.data = B.to(torch.float32)
                offset = transpose(layer.scaling[adapter] * (B @ A), layer.fan_in_fan_out)
                base.weight.data = (base.weight.float() - offset).to(base.weight.dtype)
