"""One run: config -> model -> method -> train -> evaluate -> result file.

    python -m harness.run method=milora model=smollm2-135m task=commonsense training.lr=2e-4
    python -m harness.run --multirun method=lora,pissa,milora
"""

from __future__ import annotations

import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import budget as budget_lib
from harness import methods, models
from harness.config import CONFIG_DIR, resolved, run_id, with_profile
from harness.results import environment, git_commit, result_path, versions, write_json_atomic
from harness.tasks import protocol_module, task_module
from harness.train import train


def method_options(cfg: DictConfig) -> dict:
    options = resolved(cfg)["method"]
    options.pop("name")
    options.pop("label", None)  # a preset's display name (Neat-S), not an option of the method
    return options


def reset_peak_memory() -> str:
    """Starts a new peak-memory window for this run; returns the scope the CPU number will have."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so that several runs in one
        # process (a reproduction) each report their own peak rather than the largest so far.
        Path("/proc/self/clear_refs").write_text("5")
        return "run"
    except OSError:
        return "process"


def solve_budget(cfg: DictConfig, model, total_params: int) -> dict | None:
    """Sets the method's knob in `cfg.method` from `cfg.budget` (interpolations such as alpha = 2r follow)."""
    target = budget_lib.target_count(cfg.get("budget") or {}, total_params)
    if target is None:
        return None
    method = methods.get(cfg.method.name)
    shapes = budget_lib.linear_shapes(model, cfg.method.get("target_modules"), cfg.method.get("layers_to_transform"))
    _, record = budget_lib.solve(method, shapes, method_options(cfg), target, total_params)
    cfg.method[record["knob"]] = record["value"]
    print(f"[harness] budget {target:,}: {cfg.method.name} {record['knob']}={record['value']:.6g} "
          f"-> {record['predicted']:,} parameters", flush=True)
    return record


def peak_memory(scope: str) -> dict:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if scope == "run":
        status = Path("/proc/self/status").read_text()
        peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    peak = {"cpu_peak_rss_mb": round(peak_kb / 1024, 1), "cpu_peak_scope": scope}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def run_one(cfg: DictConfig) -> dict:
    """Runs (or reuses) one configured run and returns its result record."""
    # A copy: solving a budget writes the knob into the config, and the caller's cell must keep the run id it
    # was found by (a reproduction collects its table by those ids in the same process).
    cfg = copy.deepcopy(cfg)
    rid = run_id(cfg)
    out_path = result_path(cfg.run.results_dir, rid)
    if cfg.run.skip_existing and out_path.is_file():
        print(f"[harness] {rid}: result exists, skipping ({out_path})", flush=True)
        return json.loads(out_path.read_text())
    task = task_module(cfg.task.name)
    protocol = protocol_module(task, cfg.task.name, cfg.protocol.name)
    progress = bool(cfg.run.progress)
    print(f"[harness] run {rid}", flush=True)

    # Data first: a bad data file fails before minutes of model loading.
    train_records, val_records = task.training_records(cfg.task, cfg.seed)
    # (a protocol that reads its own test data, lm-eval, is given none)
    test_sets = {} if getattr(protocol, "OWN_TEST_DATA", False) else task.test_sets(cfg.task)

    seed_everything(cfg.seed)
    memory_scope = reset_peak_memory()
    load_start = time.perf_counter()
    # The task decides the head: a causal LM unless it trains a classifier (GLUE).
    head = task.model_head(cfg.task) if hasattr(task, "model_head") else None
    model, tokenizer = models.load(cfg.model, head)
    # On the accelerator before the method: PiSSA / MiLoRA run an SVD per adapted matrix at init.
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    total_params = methods.total_parameters(model)
    budget = solve_budget(cfg, model, total_params)
    # A task's new head (a classifier) trains with every method, each in its own way.
    model = methods.apply(model, cfg.method.name, head_modules=getattr(task, "HEAD_MODULES", ()), **method_options(cfg))
    setup_seconds = time.perf_counter() - load_start

    encode = task.encoder(cfg.task, tokenizer)  # record -> training example (token ids, or an image to process)
    trained = train(
        model, tokenizer, methods.method_of(model), [encode(r) for r in train_records],
        [encode(r) for r in val_records], cfg.training, cfg.seed, cfg.logging, progress, rid,
        collator=task.collator(tokenizer, cfg.task) if hasattr(task, "collator") else None)
    model = trained["model"]
    # Counted after training: a method may add parameters before its first step (RoSA's sparse part).
    # A task's head (GLUE's classifier) trains with every method but is not the adapter's: counted apart.
    head_params = methods.trainable_parameters(model, within=getattr(task, "HEAD_MODULES", ()))
    trainable = methods.trainable_parameters(model) - head_params
    print(f"[harness] {cfg.method.name}: {trainable:,} trainable of {total_params:,} parameters"
          + (f" (+ {head_params:,} in the head)" if head_params else ""), flush=True)

    if cfg.run.save_adapter:
        methods.save(model, Path(cfg.run.results_dir) / "adapters" / rid)

    method = methods.method_of(model)
    merged = bool(cfg.protocol.merge_before_eval and method.mergeable)
    eval_model = methods.merge(model) if merged else model
    eval_model.eval()
    eval_start = time.perf_counter()
    metrics, predictions = protocol.evaluate(eval_model, tokenizer, test_sets, cfg.protocol, progress, task_cfg=cfg.task)
    eval_seconds = time.perf_counter() - eval_start

    record = {
        "run_id": rid,
        "experiment": cfg.experiment_name,
        "profile": cfg.profile.name,
        "task": cfg.task.name,
        "protocol": cfg.protocol.name,
        "model": cfg.model.name,
        "paper_model": cfg.model.paper_name,
        "method": cfg.method.name,
        "metrics": metrics,
        "params": {"trainable": trainable, "total": total_params, "trainable_percent": 100.0 * trainable / total_params,
                   "head": head_params, "budget": budget},
        "train": trained["stats"],
        "eval": {"merged": merged, "seconds": round(eval_seconds, 2),
                 "examples": sum(m["n"] for m in metrics.values())},
        "timing": {"setup_seconds": round(setup_seconds, 2)},
        "peak_memory": peak_memory(memory_scope),
        "versions": versions(),
        "git": git_commit(),
        "environment": environment(),
        "config": resolved(cfg),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    predictions_path = out_path.with_suffix(".predictions.jsonl")
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    with open(predictions_path, "w") as f:
        for name, rows in predictions.items():
            for i, row in enumerate(rows):
                f.write(json.dumps({"dataset": name, "index": i, **row}) + "\n")
    write_json_atomic(out_path, record)  # last: its presence means the run finished
    print(f"[harness] wrote {out_path}", flush=True)
    return record


def main() -> None:
    import hydra

    sys.argv = [sys.argv[0]] + with_profile(sys.argv[1:])
    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        run_one(cfg)

    _main()


if __name__ == "__main__":
    main()
