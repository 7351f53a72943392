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

What a tuner needs beyond its config is done here, at the hook peft's documentation names for it:
- LoRA inits that rewrite the base weights (OLoRA, PiSSA) save as a LoRA on the original weights, as method=pissa;
- EVA (`init_lora_weights: eva`) initialises from the training batches before the optimizer exists
  (`initialize_lora_eva_weights`, peft's documented call after `get_peft_model`), LoRA-GA (`lora_ga`) from the
  gradients of the first `init_batches` micro-batches (peft's `lora_ga_init` per layer), CorDA (`corda`) from
  their input covariance (peft's `preprocess_corda` on a view of the base layers, then `corda_init`);
- prompt-learning tuners train on padded batches (`can_pack`: their virtual tokens are prepended to every row);
- AdaLoRA learns the run's step count before training (`total_step`, a provisional value until then) and
  reallocates its ranks after every optimizer step (`update_and_allocate`, before the gradients are cleared),
  unless `method.update_ranks=false` (LoRA-GA's baselines: never reallocated); `method.e_init_std` draws its E
  from N(0, std), as peft 0.10 did.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from harness.methods.base import Method, MethodConfigError, check_options, infer_task_type
from harness.methods.lora import INITIAL_ADAPTER, remember_initial_adapter, save_on_original_weights
from harness.methods.registry import register

OPTIONS = {"type", "config", "config_file", "target_modules", "modules_to_save", "knob", "init_batches",
           "update_ranks", "e_init_std"}
# options of the harness's, not of the tuner's config (AdaLoRA's: whether its ranks are reallocated while it trains,
# and peft 0.10's N(0, std) init of its singular values E, which LoRA-GA's baselines ran with)
HARNESS_OPTIONS = ("knob", "init_batches", "update_ranks", "e_init_std")
# the config field a budget solves for, by tuner (`method.knob` names another). OFT has none: its count falls as
# its r (the number of blocks) grows, and its block size must divide every adapted width.
KNOBS = {"LORA": "r", "LOKR": "r", "LOHA": "r", "VERA": "r", "HRA": "r", "ADALORA": "init_r", "MISS": "r",
         "FOURIERFT": "n_frequency", "PROMPT_TUNING": "num_virtual_tokens", "P_TUNING": "num_virtual_tokens",
         "PREFIX_TUNING": "num_virtual_tokens", "BOFT": "boft_n_butterfly_factor", "C3A": "block_size"}
# LoRA inits that move the chosen components out of the frozen weight (peft converts them back on save)
REWRITES_BASE_WEIGHTS = ("olora", "pissa", "corda", "lora_ga")
# LoRA inits computed from the training data (before the optimizer exists), and their configs' own fields
DATA_INITS = {"eva": "eva_config", "lora_ga": "lora_ga_config", "corda": "corda_config"}
CORDA_PENDING = "corda_config"  # the run state's key: CorDA's config, until `before_training` has the data


def tuner_config(model: nn.Module, options: dict):
    """The peft config of these options for this model."""
    from peft import get_peft_config
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if options.get("config_file"):
        path = Path(str(options["config_file"]))
        if not path.is_file():
            raise MethodConfigError(f"method.config_file={path}: no such file")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MethodConfigError(f"method.config_file={path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        fields = {k: v for k, v in fields.items() if k not in ("base_model_name_or_path", "revision")}
    else:
        fields = {**dict(options.get("config") or {}), "peft_type": str(options.get("type") or "").upper()}
    kind = str(fields.get("peft_type") or "").upper()
    known = sorted(str(t.value) for t in PEFT_TYPE_TO_CONFIG_MAPPING)
    if kind not in known:
        raise MethodConfigError(f"method=peft: type {kind or None!r} is not a peft tuner; peft has {known}")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    fields["peft_type"] = kind
    fields.setdefault("task_type", infer_task_type(model))
    accepted = set(config_class.__dataclass_fields__)
    if "target_modules" in accepted and not fields.get("target_modules") and options.get("target_modules") \
            and not fields.get("target_parameters"):
        fields["target_modules"] = list(options["target_modules"])
    if options.get("modules_to_save") and "modules_to_save" in accepted:
        fields["modules_to_save"] = sorted(set(fields.get("modules_to_save") or []) | set(options["modules_to_save"]))
    if kind == "ADALORA" and not fields.get("total_step"):
        # the run's step count is known only when training starts (`before_training`); until then the smallest
        # count AdaLoRA's schedule accepts
        fields["total_step"] = int(fields.get("tinit") or 0) + int(fields.get("tfinal") or 0) + 1
    unknown = sorted(set(fields) - accepted)
    if unknown:
        raise MethodConfigError(f"method=peft type={kind}: {config_class.__name__} has no field(s) {unknown}")
    try:
        return get_peft_config(fields)
    except (TypeError, ValueError) as exc:
        raise MethodConfigError(f"method=peft type={kind}: {exc}") from None


class OnDevice:
    """The training loader's batches on the model's device (EVA reads the loader before accelerate wraps it)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}


@register("peft")
class PeftTuner(Method):
    label, display_order = "peft", 50

    def apply(self, model, state, **options):
        from peft import get_peft_model

        check_options(self.name, options, OPTIONS)
        config = tuner_config(model, {k: v for k, v in options.items() if k not in HARNESS_OPTIONS})
        # CorDA's init needs the layers' input covariance, which exists only once the data has run
        # (`before_training`): the adapter is built with peft's plain init and the CorDA config kept for then
        corda = getattr(config, "corda_config", None) if getattr(config, "init_lora_weights", None) == "corda" else None
        if corda is not None:
            config.init_lora_weights = True
        try:
            adapted = get_peft_model(model, config)
        except (ValueError, TypeError, KeyError) as exc:
            raise MethodConfigError(f"method=peft type={config.peft_type.value}: {exc}") from None
        if corda is not None:
            state[CORDA_PENDING] = corda
        if config.peft_type.value == "ADALORA":
            # AdaLoRA's `ranknum` is a constant (the rank) that peft leaves trainable when the model is on the meta
            # device: frozen here, so that the budget solver counts what the real model trains
            for name, parameter in adapted.named_parameters():
                if ".ranknum." in name:
                    parameter.requires_grad_(False)
            if options.get("e_init_std"):
                # peft <= 0.10 drew E ~ N(0, 0.02) (adalora/layer.py L76 at v0.10.0), the version LoRA-GA's
                # reproduce/requirements.txt pins; peft 0.21 starts E at zero (the output then starts unchanged)
                with torch.no_grad():
                    for name, parameter in adapted.named_parameters():
                        if ".lora_E." in name:
                            parameter.normal_(0.0, float(options["e_init_std"]))
        if str(getattr(config, "init_lora_weights", "")).startswith(REWRITES_BASE_WEIGHTS) and corda is None:
            remember_initial_adapter(adapted, state, f"peft-{config.init_lora_weights}")
        return adapted

    def apply_structure(self, model, state, **options):
        """The same tuner with peft's plain initialisation: what validation and the budget solver build on the meta
        device (a QR, SVD or data-driven init cannot run there, and changes no shape)."""
        config = dict(options.get("config") or {})
        if isinstance(config.get("init_lora_weights"), str) and config["init_lora_weights"] != "gaussian":
            config.pop(DATA_INITS.get(config["init_lora_weights"], ""), None)
            config["init_lora_weights"] = True
            options = {**options, "config": config}
        adapted = self.apply(model, state, **options)
        state.pop(INITIAL_ADAPTER, None)
        return adapted

    def validate(self, model, **options):
        self.apply_structure(model, {}, **options)

    def before_training(self, adapted, context):
        model, options = adapted.model, adapted.options
        config = model.peft_config[model.active_adapter]
        if getattr(config, "init_lora_weights", None) == "eva":
            from peft import initialize_lora_eva_weights

            with torch.no_grad():
                initialize_lora_eva_weights(model, dataloader=OnDevice(context["loader"], context["device"]),
                                            show_progress_bar=False)
        if adapted.state.get(CORDA_PENDING) is not None:
            self._corda_init(adapted, context)
        if getattr(config, "init_lora_weights", None) == "lora_ga":
            self._lora_ga_init(adapted, context, int(options.get("init_batches") or 8))
        if config.peft_type.value == "ADALORA":
            total = int(context["total_steps"])
            allocates = options.get("update_ranks", True)
            # (the last allocation step prunes by the importance the steps before it measured: at least one)
            if allocates and config.tinit + 1 >= total - config.tfinal:
                raise MethodConfigError(f"method=peft type=ADALORA: tinit={config.tinit} + tfinal={config.tfinal} "
                                        f"leave fewer than two steps of rank allocation in this run's {total} steps")
            model.base_model.rankallocator.set_total_step(total)

    def can_pack(self, adapted) -> bool:
        # a prompt-learning tuner prepends its virtual tokens to every row: packed examples would share them
        from peft import PeftModel

        model = adapted.model
        return not (isinstance(model, PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning)

    @staticmethod
    def _lora_ga_init(adapted, context, batches: int) -> None:
        """LoRA-GA (Wang et al. 2024): each adapter from the SVD of its weight's gradient on the first
        `method.init_batches` training micro-batches (8 by default). The gradients are estimated on the frozen base
        model with the adapters off, as peft's `preprocess_loraga` does before the adapter exists (it cannot run on
        an adapted model: its hooks look for the plain linear layers), then peft's own `lora_ga_init` sets A, B and
        the residual weight of every layer; the adapter as initialised is kept for the save on original weights."""
        from peft.tuners.lora import LoraLayer

        model = adapted.model
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        trainable = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers:
            layer.get_base_layer().weight.requires_grad_(True)
        count = 0
        was_training = model.training
        model.train()
        with model.disable_adapter(), torch.enable_grad():
            for batch in OnDevice(context["loader"], context["device"]):
                model(**batch).loss.backward()
                count += 1
                if count >= batches:
                    break
        for layer in layers:
            weight = layer.get_base_layer().weight
            layer.get_base_layer()._peft_loraga_grad = weight.grad.detach() / count
            weight.grad = None
        for p in model.parameters():
            p.requires_grad_(trainable[id(p)])
        model.train(was_training)
        config = model.peft_config[model.active_adapter]
        with torch.no_grad():
            for layer in layers:
                layer.lora_ga_init(model.active_adapter, config.lora_ga_config)
        remember_initial_adapter(model, adapted.state, "peft-lora_ga")

    @staticmethod
    def _corda_init(adapted, context) -> None:
        """CorDA (Yang et al. 2024): each adapter from the SVD of W C, C the covariance of the layer's inputs on the
        first `method.init_batches` training micro-batches (ipm: the components the data uses most; kpm: the least,
        keeping the rest of the model's knowledge). peft's `preprocess_corda` runs before the adapter exists and looks
        for the plain linear layers by name, so it is given a view of the base layers under their original names
        (the same modules, hooked while the adapted model runs with its adapters off); peft's `corda_init` then
        sets A, B and the residual of every layer."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.corda import preprocess_corda

        model, options = adapted.model, adapted.options
        corda = adapted.state.pop(CORDA_PENDING)
        config = copy.copy(model.peft_config[model.active_adapter])
        config.init_lora_weights, config.corda_config = "corda", corda
        view = nn.Module()  # the base layers, under the names the unadapted model gives them
        layers = [(name, m) for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)]
        for name, layer in layers:
            parent = view
            *path, leaf = name.split(".")
            for part in path:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(leaf, layer.get_base_layer())
        batches = int(options.get("init_batches") or 8)

        def run_model():
            was_training = model.training
            model.eval()
            with model.disable_adapter(), torch.no_grad():
                for i, batch in enumerate(OnDevice(context["loader"], context["device"])):
                    if i >= batches:
                        break
                    if batch["input_ids"].shape[0] == 1:  # (a packed micro-batch is one row)
                        model(**batch)
                        continue
                    # peft's covariance hook takes one sequence per forward: each row without its padding
                    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
                    for ids, keep in zip(batch["input_ids"], mask):
                        model(input_ids=ids[keep][None])
            model.train(was_training)

        preprocess_corda(view, config, run_model=run_model)
        with torch.no_grad():
            for _, layer in layers:
                layer.corda_init(model.active_adapter, "corda")
        remember_initial_adapter(model, adapted.state, "peft-corda")

    def after_optimizer_step(self, adapted, step):
        # `update_ranks=false`: AdaLoRA at its initial ranks throughout, as LoRA-GA's Trainer ran it (no file of
        # its reproduce/ calls update_and_allocate)
        model, allocate = adapted.model, adapted.options.get("update_ranks", True)
        if model.peft_config[model.active_adapter].peft_type.value == "ADALORA" and allocate:
            model.base_model.update_and_allocate(step)

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
            return methods.trainable_parameters(self.apply_structure(copy.deepcopy(skeleton), {}, **at))
        return solve_by_counting(f"peft type={kind}", f"config.{knob}", count, target, total_params)

    def knob_label(self, options):
        config = dict(options.get("config") or {})
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
