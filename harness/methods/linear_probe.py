"""Linear probing: the backbone frozen, only the task's new head trains (the "LP" row of Neat's and FourierFT's
image tables). peft has no such method (it always adds an adapter), so this is the harness's own few lines.

The head comes from the task (`modules_to_save`, filled in by `harness.methods.apply` from the task's head
module names); a task without a new head (a causal LM) has nothing to probe and is refused.
"""

from __future__ import annotations

from pathlib import Path

from harness.methods.base import Method, MethodConfigError, check_options
from harness.methods.registry import register

HEAD_FILE = "head.safetensors"


def _under(name: str, modules) -> bool:
    return any(m in name.split(".") for m in modules)


@register("linear_probe")
class LinearProbe(Method):
    label, display_order = "LP", 0

    def apply(self, model, **options):
        check_options(self.name, options, {"modules_to_save"})
        heads = list(options.get("modules_to_save") or [])
        if not heads:
            raise MethodConfigError("method=linear_probe trains only a task's new head, and this task has none "
                                    "(a causal LM task adds no head); use it with an image or GLUE task")
        for name, p in model.named_parameters():
            p.requires_grad_(_under(name, heads))
        return model

    def save(self, model, directory: Path) -> None:
        # only the head: the backbone is the untouched base model
        from safetensors.torch import save_file

        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(Path(directory) / HEAD_FILE))

    def load(self, base_model, directory, options):
        from safetensors.torch import load_file

        head = load_file(str(Path(directory) / HEAD_FILE))
        unknown = sorted(set(head) - {n for n, _ in base_model.named_parameters()})
        if unknown:
            raise MethodConfigError(f"{directory}/{HEAD_FILE}: parameters {unknown[:3]} do not exist in this model "
                                    "(was it saved from another architecture or head size?)")
        base_model.load_state_dict(head, strict=False)
        return self.apply(base_model, **options)
