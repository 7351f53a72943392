"""A run's recipe in named phases: identity -> data -> load -> adapt -> train -> evaluate (the writes are
`harness.artifacts` and `harness.results`). Every entry point builds its run from these phases, so that a run, a
re-scoring (`harness.evaluate`), a forgetting measurement, the meta-device preflight and the `experiments/`
scripts set a model up the same way:

    recipe = Recipe(cfg)
    data = recipe.data()
    model, processor = recipe.load()
    adapted = recipe.adapt(model)
    stats = recipe.train(adapted, processor, data, rid)
    scored = recipe.evaluate(adapted, processor, data.test_sets)  # metrics, predictions, merged, seconds, engine
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property

from omegaconf import DictConfig

from harness import benchmarks, distributed, engine, methods, models
from harness import budget as budget_lib
from harness.config import method_options, resolved
from harness.identity import run_id
from harness.placement import decide
from harness.selection import Selection
from harness.train import RunContext, TrainingData, train


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


@dataclass
class Scored:
    """A model's scores under the run's protocol: per-set metrics and prediction rows, whether the weights were
    merged, the seconds it took and what generated (`eval.engine` in the result: name, version, and under vLLM
    what it served and its agreement with HF)."""
    metrics: dict
    predictions: dict
    merged: bool
    seconds: float
    engine: dict


@dataclass
class RunData:
    """The records a run reads, before any model loads (a bad data file fails first)."""

    train: list
    validation: list
    test_sets: dict
    sources: list  # every data and weight source, for the result's provenance


@dataclass
class Solved:
    """The method's options with a budget's knob solved: the config as run, and the budget record (or None)."""

    cfg: DictConfig
    budget: dict | None


class Recipe:
    """One run's set-up, phase by phase, from its composed config."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.benchmark = benchmarks.get(cfg.task.name)
        self.scorer = self.benchmark.scorer(cfg.protocol.name)
        self.method = methods.get(cfg.method.name)
        self.solved = Solved(cfg, None)  # (until `adapt` solves a budget)
        self.selection = Selection.of(cfg.get("selection"))

    # -- identity ------------------------------------------------------------------------------------------------
    def identity(self) -> str:
        return run_id(self.cfg)

    @cached_property
    def placement(self):
        """Where and in what precision the run computes (decided once)."""
        return decide(self.cfg.model, self.cfg.training, self.method.trains_all_weights)

    def placement_on(self, device: str):
        """The placement the run would have on `device` ("cuda": a GPU's dtypes, for the planner)."""
        return decide(self.cfg.model, self.cfg.training, self.method.trains_all_weights, device=device)

    # -- data ----------------------------------------------------------------------------------------------------
    def data(self) -> RunData:
        """The training and held-out records and the test sets."""
        cfg, benchmark = self.cfg, self.benchmark
        sources = benchmark.data_sources(cfg.task) + models.weight_sources(cfg.model)
        records, held_out = benchmark.training_records(cfg.task, cfg.seed)
        return RunData(records, held_out, self.test_sets(), sources)

    def test_sets(self) -> dict:
        """The test sets the scorer is given (none for a scorer that reads its own: lm-eval)."""
        return {} if self.scorer.reads_own_test_data else self.benchmark.test_sets(self.cfg.task)

    # -- load ----------------------------------------------------------------------------------------------------
    @property
    def head(self):
        """The benchmark's model head (None: a causal LM; a classifier for GLUE, images)."""
        return self.benchmark.model_head(self.cfg.task)

    def load(self, seeded: bool = True):
        """(model, tokenizer or image processor) on the run's device: before the method, as PiSSA / MiLoRA run an
        SVD per adapted matrix at init. `seeded`: from the run's seed (a random-weight model is rebuilt as the
        run built it)."""
        if seeded:
            seed_everything(self.cfg.seed)
        model, processor = models.load(self.cfg.model, self.head, self.placement)
        return model.to(self.placement.device), processor

    def architecture(self):
        """The model on the meta device (no weights, no memory): what the preflight checks against."""
        return models.empty_model(resolved(self.cfg)["model"], self.head)

    # -- adapt ---------------------------------------------------------------------------------------------------
    def solve_budget(self, model) -> Solved:
        """The config with the budget's knob solved on `model` (the real one or its architecture)."""
        solved, budget = budget_lib.solved_for_model(self.cfg, model, methods.total_parameters(model))
        self.solved = Solved(solved, budget)
        return self.solved

    def adapt(self, model) -> methods.Adapted:
        """The run's method on `model`, within its budget (a task's new head, a classifier, trains with every
        method, each in its own way)."""
        solved = self.solve_budget(model)
        if solved.budget:
            b = solved.budget
            print(f"[harness] budget {b['target']:,}: {self.method.name} {b['knob']}={b['value']:.6g} "
                  f"-> {b['predicted']:,} parameters", flush=True)
        return apply_method(model, self.method.name, self.benchmark.head_modules, method_options(solved.cfg))

    def planned_structure(self, model) -> methods.Adapted:
        """The run's method on `model` (its architecture, on the meta device) without its costly initialisation,
        with what its set-up would build from data (`Method.planned_setup`): the model `harness.plan` traces."""
        solved = self.solve_budget(model)
        adapted = methods.apply(model, self.method.name, head_modules=self.benchmark.head_modules,
                                structure_only=True, **method_options(solved.cfg))
        adapted.method.planned_setup(adapted)
        return adapted

    def validate(self) -> None:
        """The method's options checked against the architecture, as `adapt` would set them up (a fresh meta
        model: applying a method changes the model it is given)."""
        solved = self.solve_budget(_cached_architecture(self))
        methods.validate(self.architecture(), self.method.name, head_modules=self.benchmark.head_modules,
                         **method_options(solved.cfg))

    def saved(self, model, directory) -> methods.Adapted:
        """The run's saved method (`harness.methods.save`) on the untouched base `model`."""
        return methods.load(model, directory)

    # -- train ---------------------------------------------------------------------------------------------------
    def training_data(self, processor, data: RunData) -> TrainingData:
        examples, held_out = self.benchmark.training_examples(self.cfg.task, processor, data.train, data.validation)
        return TrainingData(examples, held_out, processor, self.benchmark.collator(processor, self.cfg.task))

    def train(self, adapted, processor, data: RunData, rid: str, on_epoch_end=None) -> dict:
        """Trains `adapted` in place (its model is the trained one after); returns the result's `train`."""
        cfg = self.cfg
        run = RunContext(cfg.seed, rid, bool(cfg.meta.run.progress), cfg.meta.logging, self.placement, on_epoch_end,
                         cfg.meta.get("sharding"), self.selection)
        return train(adapted, self.training_data(processor, data), cfg.training, run)["stats"]

    # -- evaluate ------------------------------------------------------------------------------------------------
    def evaluate(self, adapted, processor, test_sets: dict) -> Scored:
        """The protocol's scores of a trained run, on merged weights when the protocol asks and the method merges,
        generated by the protocol's engine (harness.engine)."""
        cfg = self.cfg
        engine.check(cfg, self.scorer)
        merged = bool(cfg.protocol.merge_before_eval and adapted.method.can_merge(adapted))
        eval_model = methods.merge(adapted) if merged else adapted.model
        eval_model.eval()
        start = time.perf_counter()
        progress = bool(cfg.meta.run.progress)
        with self.placement.autocast():  # (a head trained in fp32 master weights on bf16 weights: as in training)
            with engine.serving(cfg, adapted, eval_model, merged, processor) as served:
                metrics, predictions = self.scorer.evaluate(served.model, processor, test_sets, cfg.protocol,
                                                            cfg.task, progress)
                seconds = time.perf_counter() - start
                record = dict(served.record)
                if served.compare is not None:
                    record["agreement"] = served.compare(self.scorer, test_sets, predictions, cfg.protocol, cfg.task)
        return Scored(metrics, predictions, merged, seconds, record)


def apply_method(model, name: str, head_modules, options: dict) -> methods.Adapted:
    """`harness.methods.apply` across processes: with several, an initialisation that reads the weights (an SVD)
    runs on the main process only; the others build the same structure and receive its values."""
    shared_init = distributed.active() and methods.get(name).init_reads_weights
    adapted = methods.apply(model, name, head_modules=head_modules,
                            structure_only=shared_init and not distributed.is_main(), **options)
    if shared_init:
        distributed.broadcast_model(adapted.model)
    return adapted


_ARCHITECTURES: dict[str, object] = {}


def _cached_architecture(recipe: Recipe):
    """The architecture to read shapes and count from (never adapted): cached, as a grid repeats models."""
    key = json.dumps([resolved(recipe.cfg)["model"], recipe.head or {}], sort_keys=True, default=str)
    if key not in _ARCHITECTURES:
        if len(_ARCHITECTURES) >= 32:
            _ARCHITECTURES.pop(next(iter(_ARCHITECTURES)))
        _ARCHITECTURES[key] = recipe.architecture()
    return _ARCHITECTURES[key]
