"""What the peft bridge (`harness.methods.peft_tuner`) calls for a tuner or a LoRA init that needs more than its
config: a `TunerExtension`, one per module of this package, whose hooks the bridge calls at its own where the
extension `matches` the run; and `OnDevice`, the training loader as the data-driven inits read it."""

from __future__ import annotations


class OnDevice:
    """The training loader's batches on the model's device (EVA reads the loader before accelerate wraps it)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}


class TunerExtension:
    """A tuner's or a LoRA init's behaviour beyond its peft config, at the bridge's hooks. The bridge calls each
    hook on every extension that `matches` the run, in the order of its `EXTENSIONS`; the defaults do nothing."""

    #: the peft type it concerns ("ADALORA"), or None
    peft_type: str | None = None
    #: the `init_lora_weights` it implements ("eva"), or None, and that init's own config field ("eva_config"),
    #: which the structure built on the meta device drops with the init (a data-driven init cannot run there)
    init: str | None = None
    init_config_field: str | None = None
    #: whether that init moves the chosen components out of the frozen weight (peft converts them back on save)
    rewrites_base_weights: bool = False
    #: its options of the harness's (`method.<option>`), not of the tuner's config
    options: tuple[str, ...] = ()

    def matches(self, config, state: dict) -> bool:
        """Whether it concerns a run of this peft config (its `peft_type`, else its `init`); `state`: the run's
        (`Adapted.state`), where an extension's `after_apply` may mark the run as its own."""
        if self.peft_type is not None:
            return config.peft_type.value == self.peft_type
        return self.init is not None and getattr(config, "init_lora_weights", None) == self.init

    def config_fields(self, fields: dict) -> None:
        """Sets fields of the tuner's config before peft checks them. Called on every extension (no config exists
        yet to match): `fields["peft_type"]` names the tuner."""

    def before_apply(self, config) -> None:
        """Changes the config before peft builds the adapter with it."""

    def after_apply(self, model, config, state: dict, options) -> None:
        """After peft built the adapter: `model` the peft model, `state` the run's, `options` the method's
        (`PeftOptions`, the harness's options included)."""

    def before_training(self, adapted, context: dict) -> None:
        """With the run's data (`context["loader"]`, `context["device"]`, `context["total_steps"]`), before the
        optimizer exists."""

    def after_optimizer_step(self, adapted, step: int) -> None:
        """After every optimizer step, before the gradients are cleared."""
