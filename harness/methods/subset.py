"""Methods that train a subset of the model's own weights and add nothing: linear probing (the task's new head),
BitFit (every bias, Ben Zaken et al. 2022) and layer freezing (the top k blocks, the bottom ones frozen). peft has
none of them (every peft tuner adds modules), so they are the harness's own few lines: choose the parameters,
save only those, load them back onto the untouched base model.

The task's new head (`modules_to_save`, filled in by `harness.methods.apply`) trains with each of them. Nothing is
added, so the output at initialisation is the base model's and there is nothing to merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from harness.methods.base import Method, MethodConfigError
from harness.methods.options import HeadOptions, positive_int
from harness.methods.registry import register


def under(name: str, modules) -> bool:
    """Whether parameter `name` lies under a module of one of these names."""
    return any(m in name.split(".") for m in modules or ())


class OwnWeightsSubset(Method):
    """Trains the parameters `chosen` names (and the task's head); saves them alone in `weights_file`."""

    mergeable = False  # nothing was added: the trained model already is plain weights
    weights_file = "trained.safetensors"
    options_class = HeadOptions

    def chosen(self, model: nn.Module, options: HeadOptions) -> set[str]:
        """Names of the backbone parameters this method trains."""
        raise NotImplementedError

    def apply(self, model, state, options):
        heads = list(options.modules_to_save or [])
        backbone = self.chosen(model, options)
        for name, p in model.named_parameters():
            p.requires_grad_(name in backbone or under(name, heads))
        return model

    def save(self, adapted, directory: Path) -> None:
        from safetensors.torch import save_file

        trained = {n: p.detach().contiguous().cpu() for n, p in adapted.model.named_parameters() if p.requires_grad}
        save_file(trained, str(Path(directory) / self.weights_file))

    def load(self, base_model, directory, options, state):
        from safetensors.torch import load_file

        path = Path(directory) / self.weights_file
        if not path.is_file():
            raise MethodConfigError(f"{path}: missing; this directory holds no weights saved by method={self.name}")
        weights = load_file(str(path))
        unknown = sorted(set(weights) - {n for n, _ in base_model.named_parameters()})
        if unknown:
            raise MethodConfigError(f"{path}: parameters {unknown[:3]} do not exist in this model "
                                    "(was it saved from another architecture or head size?)")
        base_model.load_state_dict(weights, strict=False)
        return self.apply(base_model, state, options)


@register("linear_probe")
class LinearProbe(OwnWeightsSubset):
    """The backbone frozen, only the task's new head trains (the "LP" row of Neat's and FourierFT's image tables).
    A task without a new head (a causal LM) has nothing to probe and is refused."""

    weights_file = "head.safetensors"

    def chosen(self, model, options):
        if not options.modules_to_save:
            raise MethodConfigError("method=linear_probe trains only a task's new head, and this task has none "
                                    "(a causal LM task adds no head); use it with an image or GLUE task")
        return set()


@register("bitfit")
class BitFit(OwnWeightsSubset):
    """Every bias of the backbone trains (attention, feed-forward and LayerNorm biases, as BitFit's full variant),
    the weights stay frozen. Count: the number of bias entries."""

    def apply(self, model, state, options):
        model = super().apply(model, state, options)
        # A norm whose bias trains computes in fp32 whole: the training loop keeps fp32 master weights of what
        # trains, and layer_norm refuses a bf16 weight beside an fp32 bias, even under autocast (a linear layer's
        # operands autocast casts). A no-op on fp32 weights.
        for module in model.modules():
            bias, weight = getattr(module, "bias", None), getattr(module, "weight", None)
            if isinstance(module, nn.LayerNorm) and bias is not None and bias.requires_grad and weight is not None:
                module.float()
        return model

    def chosen(self, model, options):
        heads = options.modules_to_save or []
        biases = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias" and not under(n, heads)}
        if not biases:
            raise MethodConfigError(f"method=bitfit: {type(model).__name__} has no bias parameters (Llama-family "
                                    "models have none); BitFit needs an encoder with biases (BERT, RoBERTa, ViT)")
        return biases


def blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: its nn.ModuleList with the most parameters (`model.layers` of a
    Llama, `encoder.layer` of BERT / ViT, `transformer.h` of GPT-2)."""
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise MethodConfigError(f"method=freeze_layers: {type(model).__name__} has no stack of blocks (nn.ModuleList)")
    return max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))


@dataclass(frozen=True, kw_only=True)
class FreezeOptions(HeadOptions):
    top_layers: int  # the blocks that train, from the top (conf/method/freeze_layers.yaml)

    def check(self, method: str) -> None:
        positive_int(method, "top_layers", self.top_layers)


@register("freeze_layers")
class FreezeLayers(OwnWeightsSubset):
    """The top `top_layers` blocks train in full, every block below them and the embeddings stay frozen (the
    survey's "freeze the bottom layers"; LLaMA-Factory's `freeze` fine-tuning). Count: the parameters of those
    blocks. Its budget knob is the number of blocks (`solve_budget` counts the model)."""

    options_class = FreezeOptions
    budget_knob = "top_layers"

    def chosen(self, model, options):
        k = options.top_layers
        prefix, stack = blocks(model)
        if k > len(stack):
            raise MethodConfigError(f"method=freeze_layers: top_layers={k} exceeds the {len(stack)} blocks of "
                                    f"{prefix}", f"use method.top_layers <= {len(stack)}")
        return {f"{prefix}.{i}.{n}" for i in range(len(stack) - k, len(stack)) for n, _ in stack[i].named_parameters()}

    def knob_label(self, options):
        return f"top {options.top_layers}" if options.top_layers else ""

    def solve_budget(self, model, options, target, total_params, options_at=None):
        from harness.methods.budget import solve_by_counting

        _, stack = blocks(model)

        def count(k: int) -> int:
            return sum(p.numel() for i in range(len(stack) - k, len(stack)) for p in stack[i].parameters()) \
                if k <= len(stack) else self.chosen(model, self.parse_options({**options, "top_layers": k}))  # (raises)
        return solve_by_counting(self.name, "top_layers", count, target, total_params)
