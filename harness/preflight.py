"""Checks a composed run before anything runs or is written: a bad input fails in seconds, not after training.

What is checked: the training batch sizes, the task and its protocol, that every data and weight source the run
would read exists (hub ids: in the cache or reachable), the budget (solved on the model's shapes), and the
method's options against the model's architecture, built on the meta device (no weights, no memory). Every
failure is a HarnessError, which the CLIs print as one line.
"""

from __future__ import annotations

from omegaconf import DictConfig

from harness import engine
from harness.errors import ConfigError
from harness.recipe import Recipe


def check_training(training) -> None:
    for key in ("batch_size", "micro_batch_size"):
        value = training.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"training.{key}={value!r} must be a positive integer")
    if training.batch_size % training.micro_batch_size:
        raise ConfigError(f"training.batch_size={training.batch_size} is not a multiple of "
                          f"training.micro_batch_size={training.micro_batch_size}",
                          "choose a micro-batch that divides the batch; the rest is gradient accumulation")


def check(cfg: DictConfig) -> str:
    """Raises a HarnessError naming what cannot work; returns the run id."""
    check_training(cfg.training)
    recipe = Recipe(cfg)
    recipe.selection.check(cfg.task.get("val_set_size"))
    recipe.scorer.check(cfg.protocol, cfg.task)
    engine.check(cfg, recipe.scorer)  # vLLM's environment is there, and the protocol can use it
    rid = recipe.identity()  # every data and weight source exists (their content is part of the id)
    recipe.validate()  # the budget and the method's options, on the meta device
    return rid
