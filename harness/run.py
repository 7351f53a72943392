"""One run: config -> model -> method -> train -> evaluate -> result file.

    python -m harness.run method=milora model=smollm2-135m task=commonsense training.lr=2e-4
    python -m harness.run --multirun method=lora,pissa,milora
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import methods, models
from harness.config import CONFIG_DIR, resolved, run_id, with_profile
from harness.protocols import commonsense as commonsense_protocol
from harness.results import environment, git_commit, result_path, versions, write_json_atomic
from harness.tasks import commonsense as commonsense_task
from harness.train import train

# Task name -> (data module, protocol name -> evaluation module). A new task or protocol adds a row here.
TASKS = {"commonsense": commonsense_task}
PROTOCOLS = {("commonsense", "paper_gen"): commonsense_protocol}


def method_options(cfg: DictConfig) -> dict:
    options = resolved(cfg)["method"]
    options.pop("name")
    return options


def peak_memory() -> dict:
    peak = {"cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def run_one(cfg: DictConfig) -> dict:
    """Runs (or reuses) one configured run and returns its result record."""
    rid = run_id(cfg)
    out_path = result_path(cfg.run.results_dir, rid)
    if cfg.run.skip_existing and out_path.is_file():
        print(f"[harness] {rid}: result exists, skipping ({out_path})", flush=True)
        return json.loads(out_path.read_text())
    try:
        task = TASKS[cfg.task.name]
        protocol = PROTOCOLS[(cfg.task.name, cfg.protocol.name)]
    except KeyError:
        raise ValueError(f"no protocol {cfg.protocol.name!r} for task {cfg.task.name!r}; known: {sorted(PROTOCOLS)}") from None
    progress = bool(cfg.run.progress)
    print(f"[harness] run {rid}", flush=True)

    # Data first: a bad data file fails before minutes of model loading.
    train_records, val_records = task.training_records(cfg.task, cfg.seed)
    test_sets = task.test_sets(cfg.task)

    seed_everything(cfg.seed)
    load_start = time.perf_counter()
    model, tokenizer = models.load(cfg.model)
    # On the accelerator before the method: PiSSA / MiLoRA run an SVD per adapted matrix at init.
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    total_params = methods.total_parameters(model)
    model = methods.apply(model, cfg.method.name, **method_options(cfg))
    trainable = methods.trainable_parameters(model)
    setup_seconds = time.perf_counter() - load_start
    print(f"[harness] {cfg.method.name}: {trainable:,} trainable of {total_params:,} parameters", flush=True)

    tokenize = lambda r: task.tokenize(r, tokenizer, int(cfg.task.cutoff_len), bool(cfg.task.train_on_inputs),
                                       bool(cfg.task.add_eos_token))
    trained = train(
        model, tokenizer, methods.method_of(model), [tokenize(r) for r in train_records],
        [tokenize(r) for r in val_records], cfg.training, cfg.seed, cfg.logging, progress, rid)
    model = trained["model"]

    if cfg.run.save_adapter:
        methods.save(model, Path(cfg.run.results_dir) / "adapters" / rid)

    method = methods.method_of(model)
    merged = bool(cfg.protocol.merge_before_eval and method.mergeable)
    eval_model = methods.merge(model) if merged else model
    eval_model.eval()
    eval_start = time.perf_counter()
    metrics, predictions = protocol.evaluate(eval_model, tokenizer, test_sets, cfg.protocol, progress)
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
        "params": {"trainable": trainable, "total": total_params, "trainable_percent": 100.0 * trainable / total_params},
        "train": trained["stats"],
        "eval": {"merged": merged, "seconds": round(eval_seconds, 2),
                 "examples": sum(m["n"] for m in metrics.values())},
        "timing": {"setup_seconds": round(setup_seconds, 2)},
        "peak_memory": peak_memory(),
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
