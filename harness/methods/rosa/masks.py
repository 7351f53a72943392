"""The sparse part S of RoSA / SpA on its fixed mask: the run's state record, the modules that get an S, attaching
masks (a zero-initialised `SparseDelta` added to each module's output by a forward hook), and reading / writing
them as the `SPARSE_FILE` a run saves and another reuses (`masks=`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.methods.base import MethodConfigError, module_matches
from harness.methods.sparse import SparseDelta

SPARSE_FILE = "rosa_sparse.safetensors"
PEFT_PREFIX = "base_model.model."
HEAD_PREFIX = "head."  # SpA's saved head parameters, beside the sparse parts


@dataclass
class RosaState:
    options: "RosaOptions"                           # the run's (harness.methods.rosa.RosaOptions)
    targets: dict[str, nn.Module]                    # name (in the plain model) -> module whose output gets S x
    initial_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    ready: bool = False                              # masks attached (or none needed: density 0)
    warmup_lrs: list = field(default_factory=list)   # the learning rates of each warm-up step (per group)
    warmup_weight_decay: list = field(default_factory=list)
    model: nn.Module | None = None                   # the model `targets` are modules of

    def rebind(self, model: nn.Module) -> None:
        """The same targets, by name, in another copy of the model: sharded training hands back a gathered copy
        (`harness.sharding.gathered`), whose modules carry the sparse parts and their forward hooks as copies."""
        by_name = {name.removeprefix(PEFT_PREFIX): module for name, module in model.named_modules()}
        self.targets = {name: by_name[name] for name in self.targets}
        self.hooks.clear()
        for module in self.targets.values():
            for key, hook in list(module._forward_hooks.items()):
                if hook is _add_sparse_output:  # the copied registration, replaced by one this state can remove
                    del module._forward_hooks[key]
            if hasattr(module, "rosa_sparse"):
                self.hooks.append(module.register_forward_hook(_add_sparse_output))
        self.model = model

    @property
    def masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(rows, cols) of every attached sparse part, read from the parts themselves."""
        return {n: m.rosa_sparse.indices() for n, m in self.targets.items() if hasattr(m, "rosa_sparse")}


STATE_KEY = "rosa"  # where a run's handle keeps its RosaState (`Adapted.state`)


def state(adapted) -> RosaState:
    """The RoSA / SpA state of an adapted run (`harness.methods.Adapted`): its target modules (each with its
    `rosa_sparse` part once the masks are attached), the masks, the options. The public way to inspect them."""
    if STATE_KEY not in adapted.state:
        raise MethodConfigError("this run has no RoSA / SpA adapter (harness.methods.apply(model, 'rosa', ...))")
    rosa = adapted.state[STATE_KEY]
    if rosa.model is not adapted.model:
        rosa.rebind(adapted.model)
    return rosa


def _add_sparse_output(module, args, output):
    return output + module.rosa_sparse(args[0])


def _target_modules(model, names: list[str], wrapped: bool) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    targets = {}
    for name, module in model.named_modules():
        plain = name.removeprefix(PEFT_PREFIX)
        if wrapped:
            if isinstance(module, LoraLayer):
                targets[plain] = module
        elif isinstance(module, nn.Linear) and module_matches(plain, names):
            targets[plain] = module
    if not targets:
        raise MethodConfigError(f"method=rosa/spa: no linear module matches target_modules={names}")
    return targets


def _weight_shape(module) -> tuple[int, int]:
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base.out_features, base.in_features


def attach_masks(state: RosaState, masks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Adds a zero-initialised S with the given mask to every target module."""
    missing = sorted(set(state.targets) - set(masks))
    if missing:
        raise MethodConfigError(f"method=rosa/spa: the masks have no entry for {missing[:3]}{'...' if len(missing) > 3 else ''}")
    for name, module in state.targets.items():
        rows, cols = masks[name]
        d_out, d_in = _weight_shape(module)
        device = next(module.parameters()).device
        module.rosa_sparse = SparseDelta(d_out, d_in, rows, cols, device=device)
        state.hooks.append(module.register_forward_hook(_add_sparse_output))
    state.ready = True


def load_masks(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / SPARSE_FILE
    if not path.is_file():
        raise MethodConfigError(f"method.masks={str(path)!r}: no such file (a {SPARSE_FILE} saved by a RoSA/SpA run)")
    tensors = load_file(str(path))
    names = {k.rsplit(".", 1)[0] for k in tensors if not k.startswith(HEAD_PREFIX)}
    return {n: (tensors[f"{n}.rows"], tensors[f"{n}.cols"]) for n in names}


def sparse_tensors(state: RosaState) -> dict[str, torch.Tensor]:
    """The mask (rows, cols) and values of every attached sparse part, on the CPU, keyed as in `SPARSE_FILE`."""
    tensors = {}
    for name, module in state.targets.items():
        if hasattr(module, "rosa_sparse"):
            rows, cols = module.rosa_sparse.indices()
            tensors[f"{name}.rows"] = rows.contiguous().cpu()
            tensors[f"{name}.cols"] = cols.contiguous().cpu()
            tensors[f"{name}.values"] = module.rosa_sparse.values.detach().contiguous().cpu()
    return tensors


def copy_sparse_values(state: RosaState, tensors: dict[str, torch.Tensor]) -> None:
    """Copies the saved values of `SPARSE_FILE` into the attached sparse parts (call under torch.no_grad)."""
    for name, module in state.targets.items():
        if f"{name}.values" in tensors:
            module.rosa_sparse.values.copy_(tensors[f"{name}.values"])
