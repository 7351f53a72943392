"""Any peft tuner as a method: its type and its config's fields, or an `adapter_config.json` (as peft's
method_comparison describes its experiments).

    method=peft method.type=IA3 'method.config={target_modules:[k_proj,v_proj,down_proj],feedforward_modules:[down_proj]}'
    method=peft method.type=LOKR 'method.config={r:8}'
    method=peft method.config_file=path/to/adapter_config.json

peft builds the tuner (`get_peft_config`, `get_peft_model`), so every tuner peft has is here with its own
defaults; the harness adds what is common to its methods: the task type from the model, the model's
`target_modules` when the config names none (for tuners that target modules), a task's new head as
`modules_to_save`. Counting is `harness.methods.trainable_parameters`, as for every method; merging is peft's
`merge_and_unload` where the tuner has it (prompt-learning tuners keep their virtual tokens, unmerged); saving
and loading are peft's `save_pretrained` / `PeftModel.from_pretrained`.

This module is the bridge, and names no tuner or init in its hooks. What a tuner needs beyond its config is a
`TunerExtension` (`extension.py`), one module of this package each, whose hooks the bridge calls where it matches
the run, at the hook peft's documentation names for it:
- LoRA inits that rewrite the base weights (OLoRA, PiSSA, and the extensions' that say so) save as a LoRA on the
  original weights, as method=pissa (here);
- EVA (`init_lora_weights: eva`, `eva.py`) initialises from the training batches before the optimizer exists
  (`initialize_lora_eva_weights`, peft's documented call after `get_peft_model`), LoRA-GA (`lora_ga`,
  `lora_ga.py`) from the gradients of the first `init_batches` micro-batches (peft's `lora_ga_init` per layer),
  CorDA (`corda`, `corda.py`) from their input covariance (peft's `preprocess_corda` on a view of the base layers,
  then `corda_init`);
- prompt-learning tuners train on padded batches (`can_pack`: their virtual tokens are prepended to every row;
  here);
- AdaLoRA (`adalora.py`) learns the run's step count before training (`total_step`, a provisional value until
  then) and reallocates its ranks after every optimizer step (`update_and_allocate`, before the gradients are
  cleared), unless `method.update_ranks=false` (LoRA-GA's baselines: never reallocated); `method.e_init_std` draws
  its E from N(0, std), as peft 0.10 did.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from harness.methods.base import Method, MethodConfigError, infer_task_type
from harness.methods.options import HeadOptions
from harness.methods.lora import INITIAL_ADAPTER, remember_initial_adapter, save_on_original_weights
from harness.methods.peft_tuner.adalora import AdaLoraAllocation
from harness.methods.peft_tuner.corda import CordaInit
from harness.methods.peft_tuner.eva import EvaInit
from harness.methods.peft_tuner.extension import OnDevice, TunerExtension
from harness.methods.peft_tuner.lora_ga import LoraGaInit
from harness.methods.registry import register

__all__ = ["PeftTuner", "PeftOptions", "tuner_config", "OnDevice", "TunerExtension", "EXTENSIONS"]

# every hook calls the extensions in this order (EVA's init, then CorDA's, then LoRA-GA's, then AdaLoRA's schedule):
# a new one is a module of this package and its line here
EXTENSIONS: tuple[TunerExtension, ...] = (EvaInit(), CordaInit(), LoraGaInit(), AdaLoraAllocation())



@dataclass(frozen=True, kw_only=True)
class PeftOptions(HeadOptions):
    """method=peft's options: the tuner (its type and config's fields, or a whole adapter_config.json), and the
    harness's own beside it (conf/method/peft.yaml lists the ones a preset may set; null: none)."""

    type: str | None = None                  # the peft type (LORA, IA3, ...), unless config_file names it
    config: dict | None = None               # the tuner config's own fields
    config_file: str | None = None           # or a whole adapter_config.json
    target_modules: list[str] | None = None  # when the config names none, for tuners that target modules
    knob: str | None = None                  # the config field a budget solves for (None: the tuner's usual one)
    # the extensions' own (each extension's `options` names its):
    init_batches: int = 8                    # EVA's, LoRA-GA's and CorDA's data-driven inits: the micro-batches read
    update_ranks: bool = True                # AdaLoRA: reallocate the ranks while training
    e_init_std: float | None = None          # AdaLoRA: E ~ N(0, std) at the start, as peft 0.10 did (None: zero)


# (an extension's options are fields of PeftOptions: a new extension adds its own there)
assert {o for extension in EXTENSIONS for o in extension.options} <= set(PeftOptions.__dataclass_fields__)
# the config field a budget solves for, by tuner (`method.knob` names another). OFT has none: its count falls as
# its r (the number of blocks) grows, and its block size must divide every adapted width.
KNOBS = {"LORA": "r", "LOKR": "r", "LOHA": "r", "VERA": "r", "HRA": "r", "ADALORA": "init_r", "MISS": "r",
         "FOURIERFT": "n_frequency", "PROMPT_TUNING": "num_virtual_tokens", "P_TUNING": "num_virtual_tokens",
         "PREFIX_TUNING": "num_virtual_tokens", "BOFT": "boft_n_butterfly_factor", "C3A": "block_size"}
# LoRA inits that move the chosen components out of the frozen weight (peft converts them back on save): peft's
# own, done inside `get_peft_model`, and the extensions' data-driven ones
REWRITES_BASE_WEIGHTS = ("olora", "pissa",
                         *(extension.init for extension in EXTENSIONS if extension.rewrites_base_weights))
# LoRA inits computed from the training data (before the optimizer exists), and their configs' own fields
DATA_INITS = {extension.init: extension.init_config_field for extension in EXTENSIONS
              if extension.init_config_field}


def tuner_config(model: nn.Module, options: PeftOptions):
    """The peft config of these options for this model."""
    from peft import get_peft_config
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if options.config_file:
        path = Path(str(options.config_file))
        if not path.is_file():
            raise MethodConfigError(f"method.config_file={path}: no such file")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MethodConfigError(f"method.config_file={path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        fields = {k: v for k, v in fields.items() if k not in ("base_model_name_or_path", "revision")}
    else:
        fields = {**dict(options.config or {}), "peft_type": str(options.type or "").upper()}
    kind = str(fields.get("peft_type") or "").upper()
    known = sorted(str(t.value) for t in PEFT_TYPE_TO_CONFIG_MAPPING)
    if kind not in known:
        raise MethodConfigError(f"method=peft: type {kind or None!r} is not a peft tuner; peft has {known}")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    fields["peft_type"] = kind
    fields.setdefault("task_type", infer_task_type(model))
    accepted = set(config_class.__dataclass_fields__)
    if "target_modules" in accepted and not fields.get("target_modules") and options.target_modules \
            and not fields.get("target_parameters"):
        fields["target_modules"] = list(options.target_modules)
    if options.modules_to_save and "modules_to_save" in accepted:
        fields["modules_to_save"] = sorted(set(fields.get("modules_to_save") or []) | set(options.modules_to_save))
    for extension in EXTENSIONS:
        extension.config_fields(fields)
    unknown = sorted(set(fields) - accepted)
    if unknown:
        raise MethodConfigError(f"method=peft type={kind}: {config_class.__name__} has no field(s) {unknown}")
    try:
        return get_peft_config(fields)
    except (TypeError, ValueError) as exc:
        raise MethodConfigError(f"method=peft type={kind}: {exc}") from None


@register("peft")
class PeftTuner(Method):
    options_class = PeftOptions

    def apply(self, model, state, options):
        from peft import get_peft_model

        config = tuner_config(model, options)
        # the extensions that concern this run are chosen on the config as given: one may change it before peft
        # builds the adapter (CorDA's init waits for the data)
        extensions = [extension for extension in EXTENSIONS if extension.matches(config, state)]
        for extension in extensions:
            extension.before_apply(config)
        try:
            adapted = get_peft_model(model, config)
        except (ValueError, TypeError, KeyError) as exc:
            raise MethodConfigError(f"method=peft type={config.peft_type.value}: {exc}") from None
        for extension in extensions:
            extension.after_apply(adapted, config, state, options)
        # (an init an extension put off, as CorDA's, is peft's plain one by now: it remembers its adapter later)
        if str(getattr(config, "init_lora_weights", "")).startswith(REWRITES_BASE_WEIGHTS):
            remember_initial_adapter(adapted, state, f"peft-{config.init_lora_weights}")
        return adapted

    def apply_structure(self, model, state, options):
        """The same tuner with peft's plain initialisation: what validation and the budget solver build on the meta
        device (a QR, SVD or data-driven init cannot run there, and changes no shape)."""
        config = dict(options.config or {})
        if isinstance(config.get("init_lora_weights"), str) and config["init_lora_weights"] != "gaussian":
            config.pop(DATA_INITS.get(config["init_lora_weights"], ""), None)
            config["init_lora_weights"] = True
            options = options.replace(config=config)
        adapted = self.apply(model, state, options)
        state.pop(INITIAL_ADAPTER, None)
        return adapted

    def validate(self, model, options):
        self.apply_structure(model, {}, options)

    @staticmethod
    def _matching(adapted):
        """The extensions that concern this run, each matched as its turn comes: one's init may leave what a later
        one's test reads (CorDA's pending config, taken once used)."""
        model = adapted.model
        config = model.peft_config[model.active_adapter]
        return (extension for extension in EXTENSIONS if extension.matches(config, adapted.state))

    def before_training(self, adapted, context):
        for extension in self._matching(adapted):
            extension.before_training(adapted, context)

    def after_optimizer_step(self, adapted, step):
        for extension in self._matching(adapted):
            extension.after_optimizer_step(adapted, step)

    def can_pack(self, adapted) -> bool:
        # a prompt-learning tuner prepends its virtual tokens to every row: packed examples would share them
        from peft import PeftModel

        model = adapted.model
        return not (isinstance(model, PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning)

    def save(self, adapted, directory: Path) -> None:
        save_on_original_weights(adapted, directory)

    def solve_budget(self, model, options, target, total_params, options_at=None):
        """The tuner's knob (`method.knob`, else its usual one: r, n_frequency, num_virtual_tokens) searched by
        building the adapted model on the meta device and counting it, so any tuner joins an equal-budget sweep."""
        from harness import methods
        from harness.methods.budget import BudgetError, solve_by_counting
        from harness.models import meta_copy

        kind = str(options.get("type") or "").upper()
        knob = options.get("knob") or KNOBS.get(kind)
        if not knob:
            raise BudgetError(f"method=peft type={kind or None}: no budget knob known for this tuner",
                              "name the config field to solve with method.knob=<field>")
        options = {k: v for k, v in options.items() if k != "knob"}
        skeleton = meta_copy(model)

        def count(value: int) -> int:
            if options_at is not None:  # (the preset's interpolations follow the knob)
                at = {k: v for k, v in options_at(f"config.{knob}", int(value)).items() if k != "knob"}
            else:
                at = {**options, "config": {**dict(options.get("config") or {}), knob: int(value)}}
            return methods.trainable_parameters(self.apply_structure(copy.deepcopy(skeleton), {},
                                                                     self.parse_options(at)))
        return solve_by_counting(f"peft type={kind}", f"config.{knob}", count, target, total_params)

    def knob_label(self, options):
        config = dict(options.config or {})
        for knob in ("r", "init_r", "n_frequency", "num_virtual_tokens", "boft_block_size", "oft_block_size"):
            if config.get(knob) is not None:
                return f"{knob}={config[knob]}"
        return ""

    def can_merge(self, adapted) -> bool:
        from peft import PeftModel

        model = adapted.model
        if not isinstance(model, PeftModel):
            return False
        config = model.peft_config[model.active_adapter]
        return not config.is_prompt_learning and hasattr(model.base_model, "merge_and_unload")

    def merge(self, adapted):
        return adapted.model.merge_and_unload() if self.can_merge(adapted) else adapted.model
