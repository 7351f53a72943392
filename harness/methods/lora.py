"""LoRA, DoRA and PiSSA: peft's LoraConfig, with the papers' options."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from harness.methods.base import Method, MethodConfigError, check_options, infer_task_type, require_positive_int
from harness.methods.registry import register

LORA_OPTIONS = {"r", "alpha", "dropout", "target_modules", "layers_to_transform", "task_type", "modules_to_save",
                "loraplus_lr_ratio"}


def lora_config(method: str, options: dict, **extra: Any):
    from peft import LoraConfig

    r = require_positive_int(method, "r", options.get("r", 8))
    return LoraConfig(
        r=r,
        lora_alpha=options.get("alpha", 2 * r),
        lora_dropout=float(options.get("dropout", 0.0)),
        target_modules=list(options["target_modules"]) if options.get("target_modules") else None,
        modules_to_save=list(options["modules_to_save"]) if options.get("modules_to_save") else None,
        layers_to_transform=list(options["layers_to_transform"]) if options.get("layers_to_transform") else None,
        task_type=options.get("task_type"),
        **extra,
    )


def wrap(model: nn.Module, config) -> nn.Module:
    from peft import get_peft_model

    if config.task_type is None:
        config.task_type = infer_task_type(model)
    return get_peft_model(model, config)


def lora_count(shapes, options) -> int:
    return sum(int(options["r"]) * (d_out + d_in) for d_out, d_in in shapes)


class LowRankBudget:
    """Methods whose budget knob is the rank r of a LoRA-shaped adapter."""

    budget_knob = "r"

    def count(self, shapes, options):
        return lora_count(shapes, options)


@register("lora")
class LoRA(LowRankBudget, Method):
    label, display_order = "LoRA", 1

    def apply(self, model, state, **options):
        check_options(self.name, options, LORA_OPTIONS)
        return wrap(model, lora_config(self.name, options))

    def param_groups(self, adapted, training):
        """LoRA+ (Hayou et al. 2024; `method.loraplus_lr_ratio`, conf/method/loraplus.yaml): B trains at ratio x
        the rate of A. peft's `create_loraplus_optimizer` builds its own optimizer, and the harness builds one
        optimizer for every method from groups (its schedule, weight decay and module rates), hence these groups."""
        ratio = adapted.options.get("loraplus_lr_ratio")
        if not ratio:
            return super().param_groups(adapted, training)
        trained = [(n, p) for n, p in adapted.model.named_parameters() if p.requires_grad]
        b = [p for n, p in trained if ".lora_B." in n]
        return [{"params": [p for n, p in trained if ".lora_B." not in n]},
                {"params": b, "lr": float(training["lr"]) * float(ratio)}]


@register("dora")
class DoRA(LowRankBudget, Method):
    label, display_order = "DoRA", 2

    def count(self, shapes, options):
        return lora_count(shapes, options) + sum(d_out for d_out, _ in shapes)  # + the magnitude vector

    def apply(self, model, state, **options):
        check_options(self.name, options, LORA_OPTIONS)
        return wrap(model, lora_config(self.name, options, use_dora=True))


INITIAL_ADAPTER = "initial_adapter_dir"  # the run state's key: the folder of the adapter as initialised


def remember_initial_adapter(model, state: dict, name: str) -> None:
    """Keeps the adapter as initialised (in a temporary folder) in the run's state, for `save_on_original_weights`."""
    initial_parent = Path(tempfile.mkdtemp(prefix=f"harness-{name}-initial-"))
    atexit.register(shutil.rmtree, initial_parent, ignore_errors=True)
    model.save_pretrained(initial_parent / "initial")
    state[INITIAL_ADAPTER] = initial_parent / "initial"


def save_on_original_weights(adapted, directory: Path) -> None:
    """Saves an adapter whose initialisation rewrote the base weights (PiSSA, MiLoRA, OLoRA) as a rank-2r LoRA
    on the untouched base weights (peft's `path_initial_model_for_weight_conversion`), so that it loads with
    plain peft on the original model; an adapter without a remembered initial state saves as it is."""
    initial = adapted.state.get(INITIAL_ADAPTER)
    if initial is None:
        adapted.model.save_pretrained(directory)
        return
    adapted.model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(initial))


class ResidualInitLoRA(LowRankBudget, Method):
    """A LoRA whose initialisation rewrites the frozen base weight (the residual): PiSSA, MiLoRA.

    The adapter alone would not reproduce the model on the original weights, so `save` converts the trained
    adapter to a rank-2r LoRA on the untouched base weights (peft's `path_initial_model_for_weight_conversion`):
    it then loads with plain peft on the original model.
    """

    init_reads_weights = True  # an SVD of every adapted weight
    #: the options of the initialisation itself, beside LoRA's
    init_options: frozenset[str] = frozenset()

    def check_init_options(self, options: dict) -> None:
        """Raises MethodConfigError for an initialisation option that cannot work (checked before any weights)."""

    def apply_structure(self, model, state, **options):
        # the same peft LoRA layers, randomly initialised: no SVD (the values come from the main process)
        options = {k: v for k, v in options.items() if k not in self.init_options}
        check_options(self.name, options, LORA_OPTIONS)
        return wrap(model, lora_config(self.name, options, init_lora_weights=True))

    def remember_initial_adapter(self, model, state: dict) -> None:
        remember_initial_adapter(model, state, self.name)

    def validate(self, model, **options):
        """The SVD needs real weights: check the options and that r fits every adapted matrix (a rank above
        min(d_out, d_in) has no singular components to take), then apply a plain LoRA to the meta model."""
        from harness.methods.budget import linear_shapes

        self.check_init_options(options)
        options = {k: v for k, v in options.items() if k not in self.init_options}
        check_options(self.name, options, LORA_OPTIONS)
        r = require_positive_int(self.name, "r", options.get("r", 8))
        shapes = linear_shapes(model, options.get("target_modules"), options.get("layers_to_transform"))
        too_small = sorted({shape for shape in shapes if r > min(shape)})
        if too_small:
            raise MethodConfigError(f"method={self.name}: r={r} exceeds min(d_out, d_in) of the adapted matrices of "
                                    f"shape {too_small}", f"use method.r <= {min(min(s) for s in shapes)}")
        wrap(model, lora_config(self.name, options))

    def save(self, adapted, directory: Path) -> None:
        save_on_original_weights(adapted, directory)


@register("pissa")
class PiSSA(ResidualInitLoRA):
    label, display_order = "PiSSA", 3
    init_options = frozenset({"svd_niter"})

    def apply(self, model, state, **options):
        options = dict(options)
        niter = options.pop("svd_niter", None)
        check_options(self.name, options, LORA_OPTIONS)
        init = "pissa" if niter is None else f"pissa_niter_{require_positive_int(self.name, 'svd_niter', niter)}"
        peft_model = wrap(model, lora_config(self.name, options, init_lora_weights=init))
        self.remember_initial_adapter(peft_model, state)
        return peft_model
