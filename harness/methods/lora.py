"""LoRA, DoRA and PiSSA: peft's LoraConfig, with the papers' options."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from torch import nn

from harness.methods.base import Method, MethodConfigError, infer_task_type
from harness.methods.options import HeadOptions, listed, positive_int
from harness.methods.registry import register


@dataclass(frozen=True, kw_only=True)
class LoraOptions(HeadOptions):
    """LoRA's options (conf/method/lora.yaml sets r, alpha and dropout: the papers' convention alpha = 2r)."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str] | None = None      # None: peft's default modules for the architecture
    layers_to_transform: list[int] | None = None  # None: every layer
    task_type: str | None = None                  # None: from the model's class
    loraplus_lr_ratio: float | None = None        # LoRA+ (conf/method/loraplus.yaml): B's lr over A's

    def check(self, method: str) -> None:
        positive_int(method, "r", self.r)


def lora_config(options: LoraOptions, **extra: Any):
    """peft's LoraConfig of LoRA's options (or of another method's that has r, alpha, dropout and the targets:
    RoSA's low-rank part)."""
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=float(options.dropout),
        target_modules=listed(options.target_modules),
        modules_to_save=listed(options.modules_to_save),
        layers_to_transform=listed(getattr(options, "layers_to_transform", None)),
        task_type=options.task_type,
        **extra,
    )


def wrap(model: nn.Module, config) -> nn.Module:
    from peft import get_peft_model

    if config.task_type is None:
        config.task_type = infer_task_type(model)
    return get_peft_model(model, config)


def lora_count(shapes, r: int) -> int:
    return sum(int(r) * (d_out + d_in) for d_out, d_in in shapes)


class LowRankBudget:
    """Methods whose budget knob is the rank r of a LoRA-shaped adapter, with LoRA's options."""

    budget_knob = "r"
    options_class = LoraOptions

    def count(self, shapes, options):
        return lora_count(shapes, options.r)


class ServedAsLoRA:
    """vLLM's LoRA serving (`Method.served_adapter`) for a peft LoRA: the LoRA family whose adapter is plain
    A / B factors on the weights the model holds (a residual initialisation's rewritten weights included)."""

    def served_adapter(self, adapted, tokenizer, folder: Path) -> int | None:
        """vLLM's LoRA serving: the base weights as an HF folder (peft's layers read back to the plain modules'
        names, the adapter's own weights left out) and the peft adapter beside them. A trained head (peft's
        `modules_to_save`: GLUE's classifier) is a whole module vLLM's LoRA does not carry: merged instead."""
        if adapted.options.modules_to_save:
            return None
        base = adapted.model.get_base_model()
        weights = {name.replace(".base_layer.", "."): tensor for name, tensor in base.state_dict().items()
                   if ".lora_" not in name}
        base.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        adapted.model.save_pretrained(folder / "adapter")
        # A residual initialisation (PiSSA, MiLoRA, LoRA-GA) already rewrote the weights written above: vLLM must
        # read the adapter as plain A / B factors, which it refuses under peft's init name ("pissa", ...).
        config_path = folder / "adapter" / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["init_lora_weights"] = True
        config_path.write_text(json.dumps(config, indent=2))
        # the rank as written, not the options': a residual run re-scored from its saved adapter holds peft's
        # rank-2r conversion (save_on_original_weights), and a rank pattern may exceed r
        return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


@register("lora")
class LoRA(ServedAsLoRA, LowRankBudget, Method):
    def apply(self, model, state, options):
        return wrap(model, lora_config(options))

    def param_groups(self, adapted, training):
        """LoRA+ (Hayou et al. 2024; `method.loraplus_lr_ratio`, conf/method/loraplus.yaml): B trains at ratio x
        the rate of A. peft's `create_loraplus_optimizer` builds its own optimizer, and the harness builds one
        optimizer for every method from groups (its schedule, weight decay and module rates), hence these groups."""
        ratio = adapted.options.loraplus_lr_ratio
        if not ratio:
            return super().param_groups(adapted, training)
        trained = [(n, p) for n, p in adapted.model.named_parameters() if p.requires_grad]
        b = [p for n, p in trained if ".lora_B." in n]
        return [{"params": [p for n, p in trained if ".lora_B." not in n]},
                {"params": b, "lr": float(training["lr"]) * float(ratio)}]


@register("dora")
class DoRA(LowRankBudget, Method):
    def count(self, shapes, options):
        return lora_count(shapes, options.r) + sum(d_out for d_out, _ in shapes)  # + the magnitude vector

    def apply(self, model, state, options):
        return wrap(model, lora_config(options, use_dora=True))


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


class ResidualInitLoRA(ServedAsLoRA, LowRankBudget, Method):
    """A LoRA whose initialisation rewrites the frozen base weight (the residual): PiSSA, MiLoRA.

    The adapter alone would not reproduce the model on the original weights, so `save` converts the trained
    adapter to a rank-2r LoRA on the untouched base weights (peft's `path_initial_model_for_weight_conversion`):
    it then loads with plain peft on the original model.
    """

    init_reads_weights = True  # an SVD of every adapted weight
    #: how many singular components past r the initialisation takes (LoRA-GA's r..2r: 2)
    components_per_rank = 1

    def apply_structure(self, model, state, options):
        # the same peft LoRA layers, randomly initialised: no SVD (the values come from the main process)
        return wrap(model, lora_config(options, init_lora_weights=True))

    def remember_initial_adapter(self, model, state: dict) -> None:
        remember_initial_adapter(model, state, self.name)

    def validate(self, model, options):
        """The SVD needs real weights: check that r fits every adapted matrix (a rank above min(d_out, d_in) has no
        singular components to take), then apply a plain LoRA to the meta model."""
        self.check_rank_fits(model, options)
        wrap(model, lora_config(options))

    def check_rank_fits(self, model, options: LoraOptions) -> None:
        from harness.methods.budget import linear_shapes

        taken = self.components_per_rank * options.r
        shapes = linear_shapes(model, options.target_modules, options.layers_to_transform)
        too_small = sorted({shape for shape in shapes if taken > min(shape)})
        if too_small:
            what = f"r={options.r}" if self.components_per_rank == 1 else \
                f"{self.components_per_rank}r={taken} (components r..{self.components_per_rank}r of the gradient)"
            raise MethodConfigError(f"method={self.name}: {what} exceeds min(d_out, d_in) of the adapted matrices of "
                                    f"shape {too_small}",
                                    f"use method.r <= {min(min(s) for s in shapes) // self.components_per_rank}")

    def save(self, adapted, directory: Path) -> None:
        save_on_original_weights(adapted, directory)


@dataclass(frozen=True, kw_only=True)
class PissaOptions(LoraOptions):
    svd_niter: int | None = None  # None: the full SVD; k: peft's fast SVD with k subspace iterations

    def check(self, method: str) -> None:
        super().check(method)
        if self.svd_niter is not None:
            positive_int(method, "svd_niter", self.svd_niter)


@register("pissa")
class PiSSA(ResidualInitLoRA):
    options_class = PissaOptions

    def apply(self, model, state, options):
        init = "pissa" if options.svd_niter is None else f"pissa_niter_{options.svd_niter}"
        peft_model = wrap(model, lora_config(options, init_lora_weights=init))
        self.remember_initial_adapter(peft_model, state)
        return peft_model
