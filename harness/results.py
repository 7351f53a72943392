"""Results: one JSON file per run under results/runs/, named by the run id, in one declared schema (`Result`);
one writer (`write_result`, atomic), one reader (`read_result`, older layouts upgraded), one loader into a
pandas DataFrame (`load_df` / `frame`) that tables and notebooks share."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import pandas as pd

from harness.config import PROJECT_ROOT
from harness.errors import HarnessError

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "lm_eval", "peft-harness")


class ResultFileError(HarnessError, ValueError):
    default_hint = "move the damaged file away; the run is redone when its result file is absent"


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def result_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def predictions_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.predictions.jsonl"


def read_predictions(results_dir: str | Path, run_id: str) -> dict[str, list[dict]]:
    """A run's prediction rows by test set, in each set's order ({} when the run wrote none: lm-eval); a
    damaged line is a ResultFileError naming the file and the line."""
    path = predictions_path(results_dir, run_id)
    if not path.is_file():
        return {}
    out: dict[str, list[dict]] = {}
    with path.open() as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                out.setdefault(row["dataset"], []).append(row)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ResultFileError(f"{path}: line {number} is not a prediction row") from None
    return out


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STATUSES = ("finished", "failed", "diverged")
SCHEMA_VERSION = 2
# the run's identity and provenance: what every result file says, finished or failed
RUN_KEYS = ("id", "experiment", "profile", "task", "protocol", "model", "paper_model", "method")


class RunInfo(TypedDict, total=False):
    id: str
    experiment: str | None
    profile: str
    task: str
    protocol: str
    model: str
    paper_model: str | None
    method: str
    config: dict            # the resolved config the run used (a solved budget's knob included)
    requested_config: dict  # with a budget: the config before the knob was solved (the run id's)
    placement: dict         # device, the weights' dtype, the compute precision (harness.placement)
    versions: dict          # python and the field's packages
    git: dict               # commit and whether the tree was dirty
    environment: dict       # platform, threads, GPU, the requirements lock and whether it matches
    inputs: list            # every data / weight source with its path, size and sha256 (or hub revision)
    ended_at: str


class Result(TypedDict, total=False):
    """One result file (`results/runs/<run id>.json`). A failed run has `failure` and none of params / train /
    eval / timing / memory."""

    schema: int
    status: str             # finished | failed | diverged
    run: RunInfo
    params: dict            # trainable (the adapter's), total, trainable_percent, head, budget
    train: dict             # steps, examples, times, first / final loss, loss_curve (per optimizer step), val_loss,
                            # batching (packed / padded), throughput
    eval: dict              # merged, seconds, examples, metrics: {test set: {accuracy, n, ...}}, engine: what
                            # generated (harness.engine: name, version; under vLLM what it served, agreement)
    timing: dict
    memory: dict
    failure: dict           # phase, error (one line), error_type, traceback (last lines)
    evaluated_from: dict    # scored by harness.evaluate: the trained run's id, the adapter, when


def write_result(path: Path, result: Result) -> None:
    """The one writer of result files (atomic)."""
    missing = [key for key in ("status", "run") if key not in result]
    if missing or result["status"] not in STATUSES:
        raise ValueError(f"not a result: missing {missing} or status {result.get('status')!r}")
    write_json_atomic(path, {"schema": SCHEMA_VERSION, **result})


def _upgrade_v1(data: dict) -> dict:
    """A file written before schema 2 (flat: run_id, metrics, config at the top) in today's layout."""
    run = {key: data.get("run_id" if key == "id" else key) for key in RUN_KEYS}
    run.update({key: data[key] for key in ("config", "versions", "git", "environment", "inputs") if key in data})
    run["ended_at"] = data.get("finished_at") or data.get("failed_at")
    result = {"schema": SCHEMA_VERSION, "status": data.get("status", "finished"), "run": run}
    if result["status"] == "finished":
        result.update(params=data.get("params") or {}, train=data.get("train") or {},
                      eval={**(data.get("eval") or {}), "metrics": data["metrics"]}, timing=data.get("timing") or {},
                      memory=data.get("peak_memory") or {})
    else:
        result["failure"] = {key: data.get(key) for key in ("phase", "error", "error_type", "traceback")}
    return result


def read_result(path: Path) -> Result:
    """A result file, finished or failed, in today's layout (older files are upgraded in memory)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: not a harness result file (a JSON {type(data).__name__})")
    schema = data.get("schema", 1)
    if schema == 1:
        for key in ("run_id", "config") + (("metrics",) if data.get("status", "finished") == "finished" else ("error",)):
            if key not in data:
                raise ResultFileError(f"{path}: not a harness result file (no {key!r})")
        data = _upgrade_v1(data)
    elif schema != SCHEMA_VERSION:
        raise ResultFileError(f"{path}: result schema {schema!r}, this harness reads 1 and {SCHEMA_VERSION}",
                              "read it with the harness version that wrote it (its run.versions says which)")
    if data.get("status") not in STATUSES:
        raise ResultFileError(f"{path}: unknown status {data.get('status')!r} (one of {list(STATUSES)})")
    needed = ("run", "eval") if data["status"] == "finished" else ("run", "failure")
    missing = [key for key in needed if not isinstance(data.get(key), dict)]
    if missing or "metrics" not in data.get("eval", {"metrics": None}):
        raise ResultFileError(f"{path}: not a harness result file (no {missing or ['eval.metrics']})")
    return data


# --- side results: what is measured on a finished run after it ended ------------------------------------------

SIDE_SCHEMA_VERSION = 1
# the measurements made after a run, on its saved adapter or its predictions (harness.forgetting; AlpacaEval's
# judge, harness.benchmarks.instruct.alpaca), and the export for alpaca_eval's own CLI (a list in its format)
SIDE_KINDS = ("forgetting", "alpaca_eval")
EXPORT_SUFFIXES = (".alpaca_eval.json",)


class SideResult(TypedDict, total=False):
    """A measurement made on a finished run after it ended, in its own file beside the run's result,
    `runs/<run id>.<kind>-<name>.json`: it never rewrites the run's result (which a reproduction may be reading),
    and a run has any number of them (one per text measured, one per judge)."""

    schema: int
    kind: str               # one of SIDE_KINDS
    name: str               # what it was measured on: the text, the judge
    run_id: str
    method: str
    model: str
    values: dict            # the numbers (forgetting: forgetting_ce, gold_ce, base_gold_ce, tokens)
    settings: dict          # how they were measured (the text's source, window and tokens; the judge's config)
    seconds: float
    ended_at: str


def side_result_path(results_dir: str | Path, run_id: str, kind: str, name: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.{kind}-{name}.json"


def is_side_file(path: Path) -> bool:
    """A side result or an export beside a run's result (not a result file)."""
    name = Path(path).name
    return name.endswith(EXPORT_SUFFIXES) or any(f".{kind}-" in name for kind in SIDE_KINDS)


def _upgrade_flat_forgetting(data: dict) -> SideResult:
    """A forgetting file written before side results had a schema (its numbers and settings at the top)."""
    values = {k: data[k] for k in ("forgetting_ce", "gold_ce", "base_gold_ce", "tokens") if k in data}
    settings = {k: data[k] for k in ("text", "text_source", "window", "max_tokens") if k in data}
    return {"schema": SIDE_SCHEMA_VERSION, "kind": "forgetting", "name": str(data.get("text")),
            "run_id": data.get("run_id"), "method": data.get("method"), "model": data.get("model"), "values": values,
            "settings": settings, "seconds": data.get("seconds"), "ended_at": data.get("ended_at")}


def read_side_result(path: Path) -> SideResult | None:
    """A side result file in today's layout (None where there is none); a damaged one is a ResultFileError."""
    if not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not data.get("run_id"):
        raise ResultFileError(f"{path}: not a side result (no run_id)")
    if "schema" not in data and "forgetting_ce" in data:
        return _upgrade_flat_forgetting(data)
    if data.get("schema") != SIDE_SCHEMA_VERSION or data.get("kind") not in SIDE_KINDS:
        raise ResultFileError(f"{path}: side result schema {data.get('schema')!r} / kind {data.get('kind')!r}, this "
                              f"harness reads schema {SIDE_SCHEMA_VERSION} of {list(SIDE_KINDS)}")
    return data


def side_results(results_dir: str | Path, run_id: str) -> dict[str, SideResult]:
    """Every side result of a run, by `<kind>-<name>`."""
    found = {}
    for path in sorted(runs_dir(results_dir).glob(f"{run_id}.*-*.json")):
        if is_side_file(path) and not path.name.endswith(EXPORT_SUFFIXES):
            found[path.name[len(run_id) + 1:-len(".json")]] = read_side_result(path)
    return found


def previous_result(path: Path) -> Result | None:
    """The result file of a run id if there is one (finished or failed); a damaged one raises ResultFileError."""
    return read_result(path) if Path(path).is_file() else None


def load_results(results_dir: str | Path) -> list[Result]:
    """Every result under results_dir/runs; a damaged file is reported and skipped, never deleted."""
    results = []
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        if is_side_file(path):
            continue
        try:
            results.append(read_result(path))
        except ResultFileError as exc:
            print(f"[harness] skipping {exc}", flush=True)
    return results


FRAME_COLUMNS = ["run_id", "status", "experiment", "profile", "task", "protocol", "model", "paper_model", "method",
                 "protocol_description", "recipe_source", "data_note", "label", "label_key", "knob", "rank", "seed", "dataset", "accuracy", "n", "metric", "trainable", "total",
                 "trainable_percent", "head", "budget_fraction", "lr", "val_loss", "epoch", "epochs_scored", "last_accuracy", "step_s", "train_s", "tokens_per_s", "padding_share", "mfu", "eval_s", "peak_mb",
                 "engine", "engine_agreement", "engine_below_threshold", "error"]


def frame(results: list[Result]) -> "pd.DataFrame":
    """Results as one long table: a row per run and test set (a failed run: one row, no dataset), with what
    tables, plots and notebooks compare (label, knob, counts, times, memory). The one flattening of result files."""
    import pandas as pd

    from harness.methods import display

    rows = []
    for result in results:
        result = result if "run" in result else _upgrade_v1(result)
        run = result["run"]
        config = run.get("config") or {}
        options = config.get("method") or {}
        params, train = result.get("params") or {}, result.get("train") or {}
        memory = result.get("memory") or {}
        base = {"run_id": run["id"], "status": result["status"], **{k: run.get(k) for k in RUN_KEYS if k != "id"},
                "label": display.label(run["method"], options), "label_key": display.label_key(run["method"], options),
                "knob": display.knob(run["method"], options), "rank": options.get("r"), "seed": config.get("seed"),
                "protocol_description": (config.get("protocol") or {}).get("description") or run.get("protocol"),
                "recipe_source": (config.get("training") or {}).get("source"),
                "data_note": run.get("data_note"),  # a finished run's words on data not the paper's
                "trainable": params.get("trainable"), "total": params.get("total"),
                "trainable_percent": params.get("trainable_percent"), "head": params.get("head"),
                "budget_fraction": (config.get("budget") or {}).get("fraction"),
                "lr": (config.get("training") or {}).get("lr"), "val_loss": train.get("val_loss"),
                "step_s": train.get("step_seconds_mean"), "train_s": train.get("train_seconds"),
                **{column: (train.get("throughput") or {}).get(key) for column, key in
                   (("tokens_per_s", "useful_tokens_per_s"), ("padding_share", "padding_share"), ("mfu", "mfu"))},
                "eval_s": (result.get("eval") or {}).get("seconds"),
                "peak_mb": memory.get("cuda_max_allocated_mb", memory.get("cpu_peak_rss_mb")),
                **_engine_columns((result.get("eval") or {}).get("engine")),
                "error": (result.get("failure") or {}).get("error")}
        metrics = (result.get("eval") or {}).get("metrics") or {}
        if not metrics:
            rows.append({**base, "dataset": None, "accuracy": None, "n": None, "metric": None})
        # a best-epoch protocol (GLUE's glue_dev): the epoch reported, how many were scored, the last one's score
        scored = len(train.get("epochs") or []) or None
        for name, m in metrics.items():
            rows.append({**base, "dataset": name, "accuracy": m.get("accuracy"), "n": m.get("n"),
                         "metric": m.get("metric", "accuracy"), "epoch": m.get("epoch"),
                         "epochs_scored": scored if "last_accuracy" in m else None,
                         "last_accuracy": m.get("last_accuracy")})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def _engine_columns(engine: dict | None) -> dict:
    """What generated a run's answers ("vllm 0.32.0"; None for HF generate, the results before the engine was
    recorded included) and, under another engine, how often its answers were HF's on the records compared."""
    if not engine or engine.get("name", "hf") == "hf":
        return {"engine": None, "engine_agreement": None, "engine_below_threshold": None}
    agreement = engine.get("agreement") or {}
    return {"engine": f"{engine['name']} {engine.get('version', '')}".strip(),
            "engine_agreement": agreement.get("rate"),
            "engine_below_threshold": agreement.get("below_threshold") if "rate" in agreement else None}


def load_df(results_dir: str | Path) -> "pd.DataFrame":
    """Every result under results_dir/runs as one frame (see `frame`)."""
    return frame(load_results(results_dir))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, Any]:
    import torch

    env = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    from harness.envlock import lock_status

    env["lock"] = lock_status()  # which requirements lock, its sha256, and whether the installed versions match
    env["host"] = socket.gethostname()
    env["scheduler"] = scheduler()
    return env


def scheduler() -> dict | None:
    """The Slurm job (and array task) or submitit job the run ran in, if any (harness.submit)."""
    if os.environ.get("SLURM_JOB_ID"):
        return {"kind": "slurm", "job_id": os.environ["SLURM_JOB_ID"],
                "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
                "restarts": os.environ.get("SLURM_RESTART_COUNT")}
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return {"kind": f"submitit-{os.environ['SUBMITIT_EXECUTOR']}", "job_id": submitit.JobEnvironment().job_id}
    return None
