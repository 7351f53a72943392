"""Scores a trained run's saved adapter (or full model) again, without training: another protocol, or the same
one again.

    python -m harness.evaluate <run id> [protocol=lmeval] [protocol.batch_size=32] [meta.run.results_dir=results]
    python -m harness.evaluate results/adapters/<run id>                     # the same, from the adapter folder

The run's result file gives the config (model, method, task, seed); `protocol=<name>` puts another protocol in
place of the run's and `key=value` changes one field. The result is written under the run id `harness.run` would
give that cell, so a reproduction reuses it and does not train again: with the run's own protocol the run's
result is rewritten with the new scores (its training statistics kept); with another it is a new result whose
`train` is the trained run's and `evaluated_from` names it. Several processes (torchrun) shard the scoring as
a run does. A run's saved adapter is under `results/adapters/<run id>/` (`meta.run.save_adapter`, on by default).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import cli_args, distributed, methods
from harness.artifacts import write_predictions
from harness.config import compose, resolved
from harness.identity import run_id, with_meta
from harness.errors import ConfigError, HarnessError, cli_errors
from harness.recipe import Recipe
from harness.results import Result, predictions_path, previous_result, result_path, runs_dir, write_result
from harness.runlock import RunLock


class EvaluateError(HarnessError):
    """A run to re-score that cannot be: no result, not finished, no saved adapter."""


def locate(target: str, results_dir: str | Path | None) -> tuple[Result, Path, Path]:
    """(the trained run's result, its results folder, its adapter folder) from a run id or an adapter folder."""
    path = Path(target)
    if path.is_dir() and path.parent.name == "adapters":
        results, rid = path.parent.parent, path.name
    else:
        results, rid = Path(results_dir or compose().meta.run.results_dir), target
    source = previous_result(result_path(results, rid))
    if source is None:
        raise EvaluateError(f"{result_path(results, rid)}: no result file for run {rid!r}",
                            "pass a run id from results/runs/ (or its folder under results/adapters/) and meta.run.results_dir")
    if source["status"] != "finished":
        raise EvaluateError(f"run {rid} is {source['status']} (phase {source['failure'].get('phase')}); only a finished "
                            "run's adapter is re-scored", "run the cell again with harness.run")
    adapter = results / "adapters" / rid
    if not (adapter / methods.SAVED_METHOD_FILE).is_file():
        raise EvaluateError(f"{adapter}: no saved adapter for run {rid}", "the run had meta.run.save_adapter=false: train it again")
    return source, results, adapter


def evaluation_config(config: dict, overrides: list[str], results: Path) -> DictConfig:
    """The run's config with `overrides` (Hydra's grammar, harness.cli_args): `protocol=<name>` puts that protocol,
    composed for the run's task, in place of the run's; `key=value` changes one field."""
    cfg = OmegaConf.create(with_meta(copy.deepcopy(config)))
    _add_newer_keys(cfg)

    def protocol(name):
        return compose([f"task={cfg.task.name}", f"protocol={name}"]).protocol

    cfg = cli_args.apply(cfg, cli_args.parse(overrides).overrides, {"protocol": protocol})
    cfg.meta.run.results_dir = str(results)
    return cfg


def _add_newer_keys(cfg: DictConfig) -> None:
    """Keys this code has that a result written before them lacks, at what that run computed with: today's `meta`
    settings beneath the run's own (meta is outside the run id) and the protocol's engine, HF (outside the id
    while it is hf), so that `protocol.engine=vllm` or `meta.vllm.*` can be set on any run without a `+`."""
    today = OmegaConf.to_container(compose().meta, resolve=True)  # plain, not struct: the run's may hold more keys
    cfg.meta = OmegaConf.merge(today, cfg.meta)
    if "engine" not in cfg.protocol:
        cfg.protocol.engine = "hf"


def evaluate(target: str, overrides: list[str], results_dir: str | None = None) -> Result:
    """Scores the run's adapter with its config changed by `overrides`; writes and returns the result."""
    source, results, adapter = locate(target, results_dir)
    cfg = evaluation_config(source["run"]["config"], overrides, results)
    # the id harness.run gives this cell: the config as asked for (before a budget solved the knob)
    requested = evaluation_config(source["run"].get("requested_config") or source["run"]["config"], overrides, results)
    rid = run_id(requested)
    recipe = Recipe(cfg)
    distributed.start(cpu=recipe.placement.device == "cpu")
    lock = RunLock(runs_dir(results), rid, stale_after_s=float(cfg.meta.run.lock_stale_seconds))
    if not distributed.on_main(lock.acquire):
        raise EvaluateError(f"run {rid} is running elsewhere ({lock.holder()})", "wait for it, then score again")
    try:
        test_sets = recipe.test_sets()
        base, processor = recipe.load()  # (from the run's seed: a random-weight model is rebuilt as the run built it)
        scored = recipe.evaluate(recipe.saved(base, adapter), processor, test_sets)
        metrics, predictions = scored.metrics, scored.predictions
        record: Result = copy.deepcopy(source)
        record["run"].update(id=rid, protocol=cfg.protocol.name, config=resolved(cfg),
                             ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if "requested_config" in record["run"]:
            record["run"]["requested_config"] = resolved(requested)
        record["eval"] = {"merged": scored.merged, "seconds": round(scored.seconds, 2), "engine": scored.engine,
                          "examples": sum(m["n"] for m in metrics.values()), "metrics": metrics}
        record["evaluated_from"] = {"run_id": source["run"]["id"], "adapter": str(adapter.resolve()),
                                    "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if distributed.is_main():
            out = result_path(results, rid)
            write_predictions(predictions_path(results, rid), predictions)
            write_result(out, record)
            print(f"[harness] wrote {out} (scored {source['run']['id']} with {cfg.protocol.name})", flush=True)
        return record
    finally:
        if distributed.is_main():
            lock.release()


def main(argv: list[str] | None = None) -> None:
    with cli_errors():
        command = cli_args.parse(sys.argv[1:] if argv is None else argv)
        if len(command.positional) != 1:
            raise ConfigError("usage: python -m harness.evaluate <run id | results/adapters/<run id>> "
                              "[protocol=<name>] [key=value ...]")
        results_dir = command.take("meta.run.results_dir")
        evaluate(command.positional[0], command.lines(), results_dir)


if __name__ == "__main__":
    main()
