"""One run: identity -> data -> model -> budget -> method -> train -> score -> result file.

    python -m harness.run method=milora model=smollm2-135m task=commonsense training.lr=2e-4
    python -m harness.run --multirun method=lora,pissa,milora

A run that fails writes its result file with `status: failed` (or `diverged`), the phase it failed in, the
error and the traceback's last lines; a finished result is never overwritten by a failure. A run holds a lock
on its run id while it lives (harness.runlock), so two sweeps over the same grid never run the same cell.
Everything a run writes (adapter, predictions) is moved into place before the result file, the last write, so
a process killed at any point leaves nothing that reads as finished.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import benchmarks, distributed, methods
from harness.artifacts import save_adapter, write_predictions
from harness.config import CONFIG_DIR, resolved, with_profile
from harness.identity import run_id
from harness.errors import describe, exit_status, traceback_tail
from harness.memory import peak_memory, reset_peak_memory
from harness.placement import decide
from harness.provenance import describe as describe_sources
from harness.recipe import Recipe
from harness.results import (
    Result,
    environment,
    git_commit,
    previous_result,
    result_path,
    runs_dir,
    versions,
    write_result,
)
from harness.runlock import RunLock
from harness.selection import EpochScorer
from harness.train import DivergedError

PHASES = ("data", "load", "method", "train", "eval", "write")
# HARNESS_PAUSE_AT=<phase> (or "result": after the adapter and predictions, before the result file) stops the
# run there for an hour (or while HARNESS_PAUSE_FILE exists): the kill and requeue tests interrupt a run at a
# known point with it.
PAUSE_ENV = "HARNESS_PAUSE_AT"


def pause_point(name: str) -> None:
    """Stops here for an hour when HARNESS_PAUSE_AT names this point, or, with HARNESS_PAUSE_FILE, while that
    file exists (a test lets the run go on by deleting it)."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"[harness] paused at {name} ({PAUSE_ENV})", flush=True)
        flag = os.environ.get("HARNESS_PAUSE_FILE")
        deadline = time.time() + 3600
        while time.time() < deadline and (flag is None or os.path.exists(flag)):
            time.sleep(0.5)


@dataclass
class Outcome:
    """What became of one cell: finished, reused, failed, diverged, or running (locked by another process)."""

    run_id: str
    status: str
    record: dict | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "reused")


class RunFailed(Exception):
    def __init__(self, outcome: Outcome):
        super().__init__(outcome.error)
        self.outcome = outcome


def run_info(cfg: DictConfig, rid: str) -> dict:
    """Who the run is (the `run` section of its result file, with its config and provenance added)."""
    return {"id": rid, "experiment": cfg.meta.experiment_name, "profile": cfg.meta.profile.name, "task": cfg.task.name,
            "protocol": cfg.protocol.name, "model": cfg.model.name, "paper_model": cfg.model.paper_name,
            "method": cfg.method.name}


class _Phases:
    """The phase a run is in (a failure record names it); entering one honours HARNESS_PAUSE_AT."""

    def __init__(self):
        self.current = "identity"

    def enter(self, name: str) -> None:
        self.current = name
        pause_point(name)


def _train_and_score(cfg: DictConfig, rid: str, out_path: Path, phases: _Phases) -> dict:
    recipe = Recipe(cfg)
    print(f"[harness] run {rid}", flush=True)

    phases.enter("data")  # data first: a bad data file fails before minutes of model loading
    data = recipe.data()

    phases.enter("load")
    memory_scope = reset_peak_memory()
    load_start = time.perf_counter()
    model, processor = recipe.load()

    phases.enter("method")
    total_params = methods.total_parameters(model)
    adapted = recipe.adapt(model)
    setup_seconds = time.perf_counter() - load_start

    phases.enter("train")
    per_epoch = EpochScorer(recipe.scorer, processor, data.test_sets, cfg) if recipe.selection.per_epoch else None
    stats = recipe.train(adapted, processor, data, rid, per_epoch)
    params = parameter_counts(adapted.model, total_params, recipe.benchmark.head_modules, recipe.solved.budget)
    print(f"[harness] {cfg.method.name}: {params['trainable']:,} trainable of {total_params:,} parameters"
          + (f" (+ {params['head']:,} in the head)" if params["head"] else ""), flush=True)

    phases.enter("eval")
    if cfg.meta.run.save_adapter and distributed.is_main():  # before a merge folds the adapter into the weights
        save_adapter(adapted, Path(cfg.meta.run.results_dir) / "adapters", rid)
    scored = recipe.evaluate(adapted, processor, data.test_sets)
    metrics, predictions = scored.metrics, scored.predictions
    if per_epoch is not None:  # the epoch each set reports, and its predictions
        metrics, predictions = per_epoch.reported(metrics, predictions, stats.get("epochs") or [])

    phases.enter("write")
    record: Result = {
        "status": "finished",
        "run": {**finished_run_info(cfg, recipe.solved.cfg, rid, recipe.solved.budget),
                "placement": recipe.placement.describe(), "inputs": describe_sources(data.sources)},
        "params": params,
        "train": stats,
        "eval": {"merged": scored.merged, "seconds": round(scored.seconds, 2), "engine": scored.engine,
                 "examples": sum(m["n"] for m in metrics.values()), "metrics": metrics},
        "timing": {"setup_seconds": round(setup_seconds, 2)},
        "memory": peak_memory(memory_scope),
    }
    if distributed.is_main():  # one run: the main process writes its files
        write_finished(out_path, record, predictions)
    return record


def write_finished(out_path: Path, record: Result, predictions: dict) -> None:
    """The predictions, then the result file: last, as its presence with status finished means the run finished."""
    write_predictions(out_path.with_suffix(".predictions.jsonl"), predictions)
    pause_point("result")
    write_result(out_path, record)
    print(f"[harness] wrote {out_path}", flush=True)


def parameter_counts(model, total_params: int, head_modules, budget: dict | None) -> dict:
    """The result's `params`: counted after training, as a method may add parameters before its first step (RoSA's
    sparse part); a task's head (GLUE's classifier) trains with every method but is not the adapter's: apart."""
    head = methods.trainable_parameters(model, within=head_modules)
    trainable = methods.trainable_parameters(model) - head
    return {"trainable": trainable, "total": total_params, "trainable_percent": 100.0 * trainable / total_params,
            "head": head, "budget": budget}


def finished_run_info(cfg: DictConfig, solved: DictConfig, rid: str, budget: dict | None) -> dict:
    """The result's `run` of a finished run: who it is, its config (with a budget's knob solved) and provenance."""
    note = benchmarks.get(cfg.task.name).data_note(cfg.task)  # (recorded: tables read it, never recompute it)
    return {**run_info(cfg, rid), "config": resolved(solved), **({"data_note": note} if note else {}),
            # the config as asked for, when a budget solved the knob: what the run id hashes (harness.evaluate)
            **({"requested_config": resolved(cfg)} if budget else {}),
            "versions": versions(), "git": git_commit(), "environment": environment(),
            "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def failure_record(cfg: DictConfig, rid: str, phase: str, exc: BaseException) -> Result:
    return {
        "status": "diverged" if isinstance(exc, DivergedError) else "failed",
        "run": {**run_info(cfg, rid), "config": resolved(cfg), "versions": versions(), "git": git_commit(),
                "environment": environment(), "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "failure": {"phase": phase, "error": describe(exc), "error_type": type(exc).__name__,
                    "traceback": traceback_tail(exc)},
    }


def _try_lock(lock: RunLock) -> tuple[bool, dict | None]:
    """(acquired, the holder's record when not)."""
    return (True, None) if lock.acquire() else (False, lock.holder())


def run_cell(cfg: DictConfig) -> Outcome:
    """Runs one configured cell unless it is finished (reused) or running elsewhere (locked); never raises for
    the cell's own failure, which is written as its result file and returned."""
    rid = run_id(cfg)
    out_path = result_path(cfg.meta.run.results_dir, rid)
    # several processes (torchrun) are one run: the main process reads and writes its files and holds its lock
    distributed.start(cpu=decide(cfg.model, cfg.training).device == "cpu")
    previous = distributed.on_main(lambda: previous_result(out_path))  # a damaged file is an error, never overwritten
    if cfg.meta.run.skip_existing and previous and previous["status"] == "finished":
        print(f"[harness] {rid}: result exists, skipping ({out_path})", flush=True)
        return Outcome(rid, "reused", previous)
    lock = RunLock(runs_dir(cfg.meta.run.results_dir), rid, stale_after_s=float(cfg.meta.run.lock_stale_seconds))
    acquired, holder = distributed.on_main(lambda: _try_lock(lock))
    if not acquired:
        holder = holder or {}
        where = f"host {holder.get('host')} pid {holder.get('pid')}" + (
            f" (Slurm job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else "")
        print(f"[harness] {rid}: running elsewhere ({where}, since {holder.get('started')}), skipping", flush=True)
        return Outcome(rid, "running", error=f"running on {where}")
    phases = _Phases()
    try:
        # finished by another process between the check above and the lock
        previous = distributed.on_main(lambda: previous_result(out_path))
        if cfg.meta.run.skip_existing and previous and previous["status"] == "finished":
            return Outcome(rid, "reused", previous)
        if previous:
            failure = previous.get("failure") or {}
            print(f"[harness] {rid}: retrying (last attempt {previous['status']} in phase {failure.get('phase')}: "
                  f"{failure.get('error')})", flush=True)
        return Outcome(rid, "finished", _train_and_score(cfg, rid, out_path, phases))
    except Exception as exc:
        record = failure_record(cfg, rid, phases.current, exc)
        if distributed.is_main():
            write_result(out_path, record)
        print(f"[harness] {rid}: {record['status']} in phase {phases.current}: {record['failure']['error']} "
              f"(record: {out_path})", flush=True)
        return Outcome(rid, record["status"], record, record["failure"]["error"], exc)
    finally:
        if distributed.is_main():
            lock.release()


def run_one(cfg: DictConfig) -> dict:
    """Runs (or reuses) one cell and returns its finished result; raises RunFailed when it did not finish."""
    outcome = run_cell(cfg)
    if not outcome.ok:
        raise RunFailed(outcome)
    return outcome.record


def main() -> None:
    import hydra

    from harness.errors import cli_errors
    from harness.preflight import check
    from harness.sweep import exit_on_sigterm, preflight_points

    exit_on_sigterm()
    argv = with_profile(sys.argv[1:])
    with cli_errors():
        preflight_points(argv, check)
    sys.argv = [sys.argv[0]] + argv
    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))
    outcomes: list[Outcome] = []

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        with cli_errors():
            outcomes.append(run_cell(cfg))

    _main()
    failed = [o for o in outcomes if not o.ok and o.status != "running"]
    if len(outcomes) > 1:
        from harness.sweep import print_summary

        print_summary(outcomes)
    for o in failed if len(outcomes) == 1 else []:
        print(o.error, file=sys.stderr, flush=True)
    if failed:
        raise SystemExit(max(exit_status(o.exception) for o in failed))


if __name__ == "__main__":
    main()
