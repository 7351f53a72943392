"""lm-eval protocol (SPEC 2.2, and RoSA's GSM8K): the trained model, in memory, scored by lm-eval's own tasks.

Commonsense: the eight multiple-choice tasks (log-likelihood of each choice; acc and acc_norm). GSM8K: lm-eval's
`gsm8k` (generate until "Question:", "#### N" extraction; strict-match and flexible-extract), 0-shot as RoSA
reports it, or `protocol.num_fewshot=5`. With the hub the built-in tasks run as they are. Offline, a task is
pointed at local files by a generated task YAML that `include:`s the built-in one and replaces its dataset with
`json` files: GSM8K's from the data dir, any task's from `protocol.local_files.<lm-eval task>.<split>` (files in
the built-in task's own record format). lm-eval's version, each task's version, shot count and sample count go
into the result.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import yaml

from harness.benchmarks.base import Scorer
from harness.errors import ConfigError
from harness.offline import HubUnavailableError, ensure_hub_available

SPLIT_KEYS = {"train": ("training_split", "fewshot_split"), "validation": ("validation_split",), "test": ("test_split",)}


@dataclass(frozen=True)
class LmEvalTask:
    """The lm-eval 0.4 task that scores one of a benchmark's test sets."""

    name: str      # e.g. "arc_easy"
    builtin: str   # its YAML under lm_eval/tasks/
    hub: str       # the hub dataset it reads when no local file is given



def _builtin_yaml(relative: str) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / relative


def local_task_yaml(task: LmEvalTask, files: Mapping[str, str], directory: Path) -> str:
    """Writes `<task>_harness.yaml`: the built-in task with its dataset replaced by local json files; returns
    the new task's name. Splits without a file are switched off (lm-eval fails on a named split it cannot load)."""
    unknown = sorted(set(files) - set(SPLIT_KEYS))
    if unknown:
        raise ConfigError(f"protocol.local_files.{task.name}: splits must be among {sorted(SPLIT_KEYS)}, got {unknown}")
    for split, path in files.items():
        if not Path(path).is_file():
            raise ConfigError(f"protocol.local_files.{task.name}.{split}: {path} does not exist")
    name = f"{task.name}_harness"
    config = {"include": str(_builtin_yaml(task.builtin)), "task": name, "tag": [], "dataset_path": "json",
              "dataset_name": None, "dataset_kwargs": {"data_files": {k: str(Path(v).resolve()) for k, v in files.items()}}}
    for split, keys in SPLIT_KEYS.items():
        for key in keys:
            config[key] = split if split in files else None
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class LmEval(Scorer):
    """lm-eval's own tasks on the trained model, in memory, for the test sets of a benchmark that names them
    (`tasks`: test set -> LmEvalTask). `own_files(task_cfg, name)`: the benchmark's local files for a set in
    lm-eval's record format (GSM8K's own jsonl), or None."""

    name = "lmeval"
    reads_own_test_data = True

    def __init__(self, tasks: Mapping[str, LmEvalTask], own_files: Callable[[Mapping, str], dict | None] | None = None,
                 chat_template: str | None = None, generates: bool = False):
        # `chat_template`: the prompts go through it as user turns (lm-eval's apply_chat_template), for a model
        # trained in a chat format its tokenizer does not carry (the Tulu format of instruction tuning)
        self.tasks, self.own_files, self.chat_template = dict(tasks), own_files, chat_template
        # `generates`: its tasks are lm-eval's generate_until (GSM8K, IFEval), which vLLM may decode
        # (harness.engine.served_lm); log-likelihood tasks stay on HF
        self.engines = ("hf", "vllm") if generates else ("hf",)

    def reference_rows(self, model, processor, name, records, limit, protocol, task):
        """The first `limit` prediction rows of set `name` as `model` gives them (lm-eval reads its own records)."""
        subset = task.get("test_subset")
        limited = {**task, "datasets": [name], "test_subset": min(limit, subset) if subset is not None else limit}
        return self._evaluate(model, processor, protocol, limited, False)[1].get(name, [])

    def sources(self, task_cfg: Mapping, protocol: Mapping) -> dict[str, Mapping | None]:
        """Our test-set name -> local files for its lm-eval task, or None (the built-in task, from the hub).
        A set with neither is left out when `task.missing_ok` (its column shows '-'), an error otherwise."""
        local = dict(protocol.get("local_files") or {})
        sources, unavailable = {}, []
        for name in task_cfg["datasets"]:
            if name not in self.tasks:
                raise ConfigError(f"protocol=lmeval has no lm-eval task for test set {name!r}; known: {sorted(self.tasks)}")
            task = self.tasks[name]
            own = self.own_files(task_cfg, name) if self.own_files else None
            if task.name in local:
                sources[name] = dict(local[task.name])
            elif own:
                sources[name] = own
            else:
                try:
                    ensure_hub_available(task.hub, "dataset", what=f"lm-eval task {task.name}")
                    sources[name] = None
                except HubUnavailableError as exc:
                    unavailable.append((name, task.name, exc))
        for name, task, exc in unavailable:
            hint = f"or give lm-eval local files in its own record format: protocol.local_files.{task}.<test|validation>=<file.jsonl>"
            if not task_cfg.get("missing_ok", True) or not sources:
                raise HubUnavailableError(f"{exc} {hint}") from None
            print(f"[harness] lm-eval task {task}: no local files and no hub ({hint}); its column will show '-'", flush=True)
        return sources

    def evaluate(self, model, tokenizer, test_sets, protocol, task, progress=True):
        """Scores every set of `task.datasets` with lm-eval (the benchmark's own test sets are not read: lm-eval
        reads its records); `task.test_subset` becomes lm-eval's `limit` (the first N, as test_subset_mode=first).
        With several processes the main one runs lm-eval (on a model it did not load, lm-eval does not shard)
        and the others receive its scores."""
        from harness import distributed

        return distributed.on_main(lambda: self._evaluate(model, tokenizer, protocol, task, progress))

    def _evaluate(self, model, tokenizer, protocol, task, progress):
        if task.get("test_subset") is not None and task.get("test_subset_mode", "first") != "first":
            raise ConfigError("protocol=lmeval takes the first task.test_subset records (lm-eval's limit)",
                              "set task.test_subset_mode=first")
        import lm_eval
        from lm_eval.tasks import TaskManager

        from harness.engine.served_lm import lm_eval_model

        start = time.perf_counter()
        sources = self.sources(task, protocol)
        limit = task.get("test_subset")
        with tempfile.TemporaryDirectory(prefix="harness_lmeval_") as directory:
            names = {}
            for name, files in sources.items():
                lm_task = self.tasks[name]
                names[name] = local_task_yaml(lm_task, files, Path(directory)) if files else lm_task.name
            local_only = all(files for files in sources.values())
            # Indexing lm-eval's ~15k built-in task names takes seconds; with only local tasks it is not needed.
            manager = TaskManager(include_path=directory, include_defaults=not local_only)
            lm = lm_eval_model(model, tokenizer, int(protocol["batch_size"]), int(protocol["max_length"]))
            chat = {}
            if self.chat_template:
                previous, tokenizer.chat_template = getattr(tokenizer, "chat_template", None), self.chat_template
                chat = {"apply_chat_template": True}
            try:
                out = self._simple_evaluate(lm_eval, lm, names, manager, protocol, limit, chat)
            finally:
                if self.chat_template:
                    tokenizer.chat_template = previous
        seconds = time.perf_counter() - start
        return self._results(out, names, sources, protocol, seconds, progress)

    @staticmethod
    def _simple_evaluate(lm_eval, lm, names, manager, protocol, limit, chat):
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(names.values()), task_manager=manager, num_fewshot=protocol.get("num_fewshot"),
            limit=int(limit) if limit is not None else None, log_samples=True,
            bootstrap_iters=int(protocol.get("bootstrap_iters", 1000)),
            gen_kwargs={"max_gen_toks": int(protocol["max_gen_toks"])}, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0, **chat)

    def _results(self, out, names, sources, protocol, seconds, progress):
        metrics, predictions = {}, {}
        for name, lm_name in names.items():
            lm_task = self.tasks[name].name
            scores = out["results"][lm_name]
            primary = protocol["primary_metric"].get(lm_task) or protocol["primary_metric"]["default"]
            values = {key.replace(",none", ""): _number(v) for key, v in scores.items()
                      if "," in key and "stderr" not in key and _number(v) is not None}
            if primary not in values:
                raise ConfigError(f"lm-eval task {lm_name} reported {sorted(values)}, not protocol.primary_metric {primary!r}")
            metrics[name] = {
                "accuracy": 100.0 * values[primary], "metric": primary, "n": int(out["n-samples"][lm_name]["effective"]),
                **{k: 100.0 * v for k, v in values.items()},
                "lmeval_task": lm_name, "task_version": str(out["versions"].get(lm_name)),
                "num_fewshot": out["n-shot"].get(lm_name), "source": "local files" if sources[name] else "hub",
                "seconds": round(seconds, 2),
            }
            predictions[name] = [{"doc_id": s.get("doc_id"), "filter": s.get("filter"), "target": str(s.get("target")),
                                  "response": str(s.get("filtered_resps")),
                                  "correct": bool(_number(s.get(primary.split(",")[0])) or 0)}
                                 for s in out.get("samples", {}).get(lm_name, [])
                                 if s.get("filter", "none") == (primary.split(",") + ["none"])[1]]
            if progress:
                print(f"[harness] {name} (lm-eval {lm_name}, {metrics[name]['num_fewshot']}-shot): "
                      f"{metrics[name]['accuracy']:.1f}% {primary} of {metrics[name]['n']}", flush=True)
        return metrics, predictions
