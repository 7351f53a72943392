"""A run's identity: the semantic part of its config (the config less where things are and how they are shown),
the content of what it reads and the code's behaviour versions, hashed into its run id.

Above the benchmarks and methods (it asks them for their data sources and behaviour versions), below everything
that runs: a run, its status, its table and a Slurm array all find a result by this id."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig

from harness.config import resolved

# Where things are, how a run is run, planned, judged and shown: the root config's `meta` node, left out of the run
# hash whole so that a result is found again from another checkout, data location, results folder or launcher.
META = "meta"
# The keys `meta` holds that were root keys before it existed (harness.identity.with_meta moves them, in a config
# a result wrote before).
MOVED_UNDER_META = ("run", "logging", "data_dir", "grid", "grid_cross", "profile_overrides", "table",
                    "experiment_name", "profile", "launcher", "sharding", "seeds", "paper_seeds", "tune_lr",
                    "lr_point", "gpu", "gpus", "plan")
# Where the data and weights are: replaced in the run hash by what they hold (`inputs`, harness.provenance).
LOCATION_TASK_KEYS = ("data_dir", "train_file", "test_file", "test_files", "paper_train_file")
# `sizes`: the published size of data this machine may not hold, for the planner (harness.plan.work)
NON_SEMANTIC_TASK_KEYS = (*LOCATION_TASK_KEYS, "missing_ok", "sizes")


def with_meta(config: dict) -> dict:
    """A resolved config as this code composes it: one a result wrote before `meta` existed has the keys `meta`
    now holds at its root, and gets them moved there (a copy; a config with `meta` is returned as it is)."""
    if META in config:
        return config
    config = dict(config)
    config[META] = {key: config.pop(key) for key in MOVED_UNDER_META if key in config}
    return config


def _drop_paths(node) -> None:
    """Removes every `path` key (a location: its content enters the hash through `inputs`)."""
    if isinstance(node, dict):
        node.pop("path", None)
        for value in node.values():
            _drop_paths(value)


def inputs(cfg: DictConfig) -> dict[str, str]:
    """What the run reads, by content: role -> sha256 / hub revision / package version (harness.provenance)."""
    from harness import benchmarks
    from harness.models import weight_sources
    from harness.provenance import fingerprint

    data = fingerprint(benchmarks.get(cfg.task.name).data_sources(cfg.task))
    model = fingerprint(weight_sources(cfg.model))
    return {**{f"data/{k}": v for k, v in data.items()}, **{f"model/{k}": v for k, v in model.items()}}


def behaviour_versions(cfg: DictConfig) -> dict[str, int]:
    """The code's declared behaviour versions for this run: a fix that changes what a run computes bumps one,
    so results made before it are never reused (README, "For developers")."""
    from harness import benchmarks, methods, train

    benchmark = benchmarks.get(cfg.task.name)
    return {"method": methods.get(cfg.method.name).behaviour_version, "task": benchmark.behaviour_version,
            "protocol": benchmark.scorer(cfg.protocol.name).behaviour_version, "training": train.BEHAVIOUR_VERSION}


# Protocols that carried the best-epoch choice as `protocol.report` before `selection` was a config group
REPORTED_BY_PROTOCOL = ("glue_dev",)


def _selection_as_hashed_before(data: dict) -> None:
    """The `selection` group hashed as the keys it replaced (training.select_best / eval_steps, glue_dev's
    protocol.report), so that a run keeps the id it had before the group existed and its results are reused. A
    config written before (a result's own) has those keys already and no `selection`: left as it is."""
    if "selection" not in data:
        return
    selection = data.pop("selection") or {}
    on_loss = selection.get("monitor") == "held_out_loss"
    data.setdefault("training", {}).update(select_best=on_loss, eval_steps=selection.get("steps") if on_loss else None)
    protocol = data.setdefault("protocol", {})
    if selection.get("every") == "epoch" or protocol.get("name") in REPORTED_BY_PROTOCOL:
        protocol["report"] = "best_epoch" if selection.get("every") == "epoch" else "last"


def _display_as_hashed_before(method: dict) -> None:
    """How tables show a method (its file's `label` and `display_order`) stays out of the run id, so that a run
    keeps the id it had before they were in its file; a preset's own label (Neat-S, LoRA+, AdaLoRA) was always in
    it and stays (it names what the preset computes)."""
    from harness import methods
    from harness.methods.display import own_display

    method.pop("display_order", None)
    name = str(method.get("name"))
    own = own_display(name)[0]
    if "label" in method and method["label"] == own and not methods.get(name).own_label_in_run_id:
        method.pop("label")


def semantic_config(cfg: DictConfig, with_inputs: bool = True) -> dict:
    """The part of the resolved config that determines the result (what the run id hashes): the config less
    where things are and how they are shown, plus the content of what the run reads and the code's behaviour
    versions."""
    from harness import benchmarks

    data = with_meta(resolved(cfg))
    _selection_as_hashed_before(data)
    _display_as_hashed_before(data.setdefault("method", {}))
    data["task"] = benchmarks.get(cfg.task.name).semantic_task(data["task"])
    data.pop(META, None)
    for key in NON_SEMANTIC_TASK_KEYS:
        data.get("task", {}).pop(key, None)
    data.get("protocol", {}).pop("description", None)  # a caption's words
    if data.get("protocol", {}).get("engine", "hf") == "hf":
        data["protocol"].pop("engine", None)  # HF generate: the run is what it was before engines existed
    data.get("training", {}).pop("source", None)       # where the recipe comes from: a footnote's words
    _drop_paths(data.get("task"))
    _drop_paths(data.get("model"))
    if not any(v is not None for v in (data.get("budget") or {}).values()):
        data.pop("budget", None)  # no budget: the run is what it was before budgets existed
    if with_inputs:  # (without: a config-only identity, for checks that must not read the data or the hub)
        data["inputs"] = inputs(cfg)
    data["behaviour"] = behaviour_versions(cfg)
    return data


def run_id(cfg: DictConfig) -> str:
    """A stable id for a run: task, model and method names for people, a hash of the semantic config for identity."""
    payload = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{task_label(cfg.task)}-{cfg.model.name}-{cfg.method.name}-{digest}"


def task_label(task) -> str:
    """The task part of a run id: the benchmark and, when it scores one or two sets, which ("math-gsm8k",
    "glue-cola"); the eight commonsense sets are just "commonsense"."""
    datasets = list(task.get("datasets") or [])
    return task.name if not datasets or len(datasets) > 2 else f"{task.name}-{'+'.join(datasets)}"
