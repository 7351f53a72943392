"""Where every cell of an experiment stands: finished, running (where, since when), failed (the error) or missing.

    python -m harness.status experiment=table1                 # the profile chosen from the machine
    python -m harness.status experiment=sweep_budget profile=paper

Read from what runs leave behind: result files (harness.results) and run locks (harness.runlock); nothing is
run or changed. Exit status 0 when every cell is finished, 1 otherwise.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from harness.config import with_profile

from harness.identity import run_id

from harness.grid import experiment_cells
from harness.errors import HarnessError, cli_errors, describe
from harness.results import previous_result, result_path, runs_dir
from harness.runlock import lock_state


def cell_state(cfg: DictConfig) -> dict:
    """{"run_id", "model", "method" (its table label and knobs), "state": finished | running | stale lock |
    failed | diverged | missing | unknown, "detail"}."""
    from harness.methods import display

    method = display.cell_label(cfg)  # (a budget's knob is solved at run time)
    row = {"model": cfg.model.name, "method": method, "run_id": None, "state": "unknown", "detail": ""}
    try:
        rid = run_id(cfg)  # reads the inputs' content (a hub revision for hub data)
    except HarnessError as exc:
        return {**row, "detail": f"no run id: {describe(exc)}"}
    row["run_id"] = rid
    lock = lock_state(runs_dir(cfg.meta.run.results_dir), rid, stale_after_s=float(cfg.meta.run.lock_stale_seconds))
    result = previous_result(result_path(cfg.meta.run.results_dir, rid))
    if result is not None and result["status"] == "finished":
        metrics = result["eval"]["metrics"]
        mean = sum(m["accuracy"] for m in metrics.values()) / len(metrics) if metrics else float("nan")
        return {**row, "state": "finished", "detail": f"{len(metrics)} set(s), mean {mean:.1f}, ended {result['run'].get('ended_at')}"}
    if lock is not None and not lock.get("partial"):
        where = f"host {lock.get('host')} pid {lock.get('pid')}"
        if lock.get("slurm_job_id"):
            task = lock.get("slurm_array_task_id")
            where += f", Slurm job {lock['slurm_job_id']}" + (f" task {task}" if task is not None else "")
        state = "stale lock" if lock["stale"] else "running"
        detail = f"{where}, since {lock.get('started')}" + (f" ({lock['stale_reason']})" if lock["stale"] else "")
        return {**row, "state": state, "detail": detail}
    if result is not None:  # failed or diverged, and not running again
        failure = result.get("failure") or {}
        return {**row, "state": result["status"], "detail": f"phase {failure.get('phase')}: {failure.get('error')}"}
    return {**row, "state": "missing"}


def cell_states(overrides: list[str]) -> tuple[DictConfig, list[dict]]:
    base, cells = experiment_cells(overrides)
    return base, [cell_state(cfg) for cfg in cells]


def format_states(base: DictConfig, rows: list[dict]) -> str:
    import pandas as pd

    counts = pd.Series([r["state"] for r in rows]).value_counts()
    head = (f"{base.meta.experiment_name}, profile {base.meta.profile.name}: {len(rows)} cells; "
            + ", ".join(f"{n} {state}" for state, n in counts.items()))
    frame = pd.DataFrame(rows, columns=["state", "model", "method", "run_id", "detail"])
    frame.index = range(1, len(frame) + 1)
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        return head + "\n" + frame.to_string()


def main(argv: list[str] | None = None) -> None:
    with cli_errors():
        base, rows = cell_states(with_profile(sys.argv[1:] if argv is None else argv))
    print(format_states(base, rows))
    raise SystemExit(0 if all(r["state"] == "finished" for r in rows) else 1)


if __name__ == "__main__":
    main()
