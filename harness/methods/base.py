"""The method interface: everything method-specific lives behind these hooks, never in the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from harness.methods.errors import MethodConfigError
from harness.methods.options import Options


@dataclass(eq=False)
class Adapted:
    """One run's adapted model, the handle `harness.methods.apply` (and `load`) return and every later hook takes.

    `options` is the method's typed record (its `Method.options_class`, parsed once by `apply`). `state` is what
    the method keeps for this run between its hooks (RoSA's targets and masks, the adapter as initialised that
    PiSSA saves against, CorDA's pending preprocessing): it lives here, never as attributes on the model, and
    methods are singletons with no per-run fields. `model` is the plain (unwrapped) model; the trainer puts the
    trained one back (gathered, when sharded)."""

    model: nn.Module
    method: "Method"
    options: Options
    state: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method.name


class MethodCore:
    """What every method is: its options, `apply` (the one hook a method must write), and merging, saving and
    loading, whose defaults are peft's."""

    name: str = ""
    #: the method's options, one typed record (`harness.methods.options`)
    options_class: type[Options] = Options
    #: whether `merge` folds the method into plain weights (the evaluation then runs on the merged model)
    mergeable: bool = True
    #: bumped by a change that alters what a run of this method computes; it enters the run id, so results made
    #: before the change are not reused as if made after it
    behaviour_version: int = 1
    #: its config file's own label is part of its run id: a file that stated one before every method file did
    #: (harness.identity keeps such ids as they were); other files' labels are display only
    own_label_in_run_id: bool = False
    #: trains every weight of the model (its placement keeps fp32 master weights of all; a table's full-model row)
    trains_all_weights: bool = False
    #: its initialisation reads the weights (an SVD): with several processes only the main process computes it,
    #: the others build the same structure with `apply_structure` and receive the values (harness.distributed)
    init_reads_weights: bool = False

    def parse_options(self, options: Mapping[str, Any]) -> Options:
        """The typed options of this dict (a config's or a library call's); MethodConfigError names what is wrong."""
        return self.options_class.parse(self.name, options)

    def apply(self, model: nn.Module, state: dict, options: Options) -> nn.Module:
        """The model with the method added. `state`: this run's dict (`Adapted.state`) for what later hooks need."""
        raise NotImplementedError

    def apply_structure(self, model: nn.Module, state: dict, options: Options) -> nn.Module:
        """The model `apply` would give, with the same parameters and buffers but any values in them: for a
        process that receives the values from the main one. Overridden where `apply` computes something costly."""
        return self.apply(model, state, options)

    def validate(self, model: nn.Module, options: Options) -> None:
        """Raises MethodConfigError for options that cannot work on this model, before any weights load.

        `model` is the architecture on the meta device (`harness.models.empty_model`); by default the method is
        applied to it, which checks every option at no memory cost. A method whose set-up reads the weights
        (an SVD) overrides this with the checks that need only the shapes."""
        self.apply(model, {}, options)

    def with_head(self, options: dict, head_modules: list[str]) -> dict:
        """The options (a dict, before parsing) that also train a task's new head (a classifier under these module
        names).

        peft-based methods keep it as `modules_to_save` (peft trains a copy and saves it with the adapter, and a
        merge puts it back); a method that trains everything anyway overrides this to add nothing."""
        if not head_modules:
            return options
        return {**options, "modules_to_save": sorted(set(options.get("modules_to_save") or []) | set(head_modules))}

    def can_merge(self, adapted: Adapted) -> bool:
        """Whether `merge` folds this adapted model into plain weights (a tuner of peft's may not: prompts)."""
        return self.mergeable

    def merge(self, adapted: Adapted) -> nn.Module:
        from peft import PeftModel

        if isinstance(adapted.model, PeftModel):
            return adapted.model.merge_and_unload()
        return adapted.model

    def save(self, adapted: Adapted, directory: Path) -> None:
        adapted.model.save_pretrained(directory)

    def load(self, base_model: nn.Module, directory: Path, options: Options, state: dict) -> nn.Module:
        """The model `save` wrote, on the untouched base model; `state` as in `apply`."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(directory))


class ServingHooks:
    """Optional: how an evaluation engine serves the method unmerged (harness.engine). Default: it cannot, and
    vLLM serves the merged weights (or none: the run says to merge)."""

    def served_adapter(self, adapted: Adapted, tokenizer, folder: Path) -> int | None:
        """Writes the base weights (an HF folder at `folder`) and a LoRA adapter vLLM loads (`folder/adapter`) and
        returns its rank; None: this method has none."""
        return None


class TrainingHooks:
    """Optional: what a method does while it trains, each hook taking the run's handle. Defaults: nothing."""

    #: its set-up reads gradients before training (RoSA's masks): benchmarks make it in a process of its own,
    #: so the training steps' peak memory is their own (`quick_setup_overrides`, `reuse_setup_overrides`)
    setup_reads_gradients: bool = False

    def param_groups(self, adapted: Adapted, training: dict) -> list[dict]:
        """Optimizer parameter groups; methods with several learning rates override this."""
        return [{"params": [p for p in adapted.model.parameters() if p.requires_grad]}]

    def before_training(self, adapted: Adapted, context: dict) -> None:
        """Called once before the optimizer is built (e.g. to add parameters built from gradients).

        `context`: `loader` (training batches), `device`, `training` (the training config)."""

    def after_optimizer_step(self, adapted: Adapted, step: int) -> None:
        """Called after each optimizer step (`step` counts from 1), with the step's gradients still in place and
        before they are cleared: for a method that adapts itself while it trains (AdaLoRA's rank allocation)."""

    def set_trainable_precision(self, adapted: Adapted) -> set[int]:
        """Casts the parameters this method deliberately trains in a lower precision (RoSA's bf16 option) and
        returns their ids; the training loop keeps fp32 master weights for every other trained parameter. Called
        after `before_training`. Default: none."""
        return set()

    def can_pack(self, adapted: Adapted) -> bool:
        """Whether several examples may share one packed row (training.batching=packed) with this method; a
        method that adds to every row (a prompt tuner's virtual tokens) trains on padded batches instead."""
        return True

    def quick_setup_overrides(self) -> list[str]:
        """Overrides that make the set-up cheap where a benchmark times only the training steps."""
        return []

    def reuse_setup_overrides(self, directory: str) -> list[str]:
        """Overrides that reuse a set-up saved in `directory` (RoSA's masks)."""
        return []

    def planned_setup(self, adapted: Adapted) -> None:
        """Adds, on `adapted` as `apply_structure` built it (on the meta device), what `before_training` would build
        from data, with the same shapes and any values: the structure whose training step `harness.plan` traces
        (RoSA / SpA: the sparse parts at their density). Default: nothing (the structure is all there)."""


class BudgetHooks:
    """Optional: how an equal-parameter budget sets the method's knob (`harness.methods.budget`)."""

    #: the option a parameter budget solves for ("r", "density"), or None when the method has no knob
    budget_knob: str | None = None

    def count(self, shapes: list[tuple[int, int]], options: Options) -> int:
        """Trainable parameters this method would add on linear layers of these (d_out, d_in) shapes.

        Used only to solve a budget before any model is adapted; the count a result records is always
        `harness.methods.trainable_parameters` on the real model."""
        raise MethodConfigError(f"method={self.name} has no parameter budget knob")

    def solve_budget(self, model: nn.Module, options: dict, target: int, total_params: int,
                     options_at=None) -> dict | None:
        """A budget solved by the method itself on `model` (the real model or its architecture on the meta
        device): the record of `harness.methods.budget.solve`. None (the default): the shape-based solver with
        `count`. `options` is the config's dict; `options_at(knob, value)`: that dict with a (dotted) knob set and
        the config's interpolations that follow it resolved again (AdaLoRA's target_r follows init_r)."""
        return None


class Display:
    """Optional: the knobs a table shows beside the method's label (`harness.methods.display`; the label and the
    place of its rows are its config file's `label` and `display_order`)."""

    def knob_label(self, options: Options) -> str:
        """The knobs a table shows beside the label ("r=16", "r=12 d=0.15%"); "" for none."""
        r = getattr(options, "r", None)
        return f"r={r}" if self.budget_knob == "r" and r else ""


class Method(MethodCore, TrainingHooks, ServingHooks, BudgetHooks, Display):
    """One fine-tuning method: the core (`MethodCore`: options, apply, merge, save, load) and the optional hooks
    (`TrainingHooks`, `ServingHooks`, `BudgetHooks`, `Display`), each with a working default. A method subclasses
    this, sets its `options_class` and writes `apply`; its config file (conf/method/<name>.yaml) holds its options'
    values, its label and its place in tables. Everything method-specific lives here, never in the training loop."""


def infer_task_type(model: nn.Module) -> str | None:
    """peft task type from the model class (generation needs PeftModelForCausalLM)."""
    cls = type(model).__name__
    if cls.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return None  # e.g. ViTForImageClassification: peft has no task type; the head comes as modules_to_save


def svd_components(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full (thin) SVD in float32: U [d_out,k], S [k] descending, Vh [k,d_in]."""
    return torch.linalg.svd(weight.float(), full_matrices=False)


def module_matches(name: str, target_modules) -> bool:
    """peft's list semantics: a module is targeted when its name is, or ends with `.`+, one of the names."""
    return any(name == t or name.endswith("." + t) for t in target_modules or [])
