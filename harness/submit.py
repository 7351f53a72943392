"""Submits an experiment's unfinished cells as one job array and returns (or waits, then writes the table).

    python -m harness.submit experiment=table1 launcher=slurm meta.launcher.partition=gpu      # returns at once
    python -m harness.submit experiment=table1 launcher=local --wait                      # this machine
    python -m harness.submit experiment=table1 launcher=slurm --dry-run                   # what would go
    python -m harness.submit experiment=table1 launcher=slurm --evaluate protocol=lmeval  # a second protocol

Cells that are finished or running (a live lock) are left out; missing, failed, diverged and stale-locked ones
are submitted, `launcher.cells_per_task` per array task. Each task runs its cells as `harness.run` does
(`run_cell`: the lock, the result file, a failure record), so a sweep can be submitted again at any time and
completes the grid with every cell run once. A task that Slurm preempts or times out is requeued and reruns
its cell from the start (the lock lets the requeued task take over its own cell); the harness does not save
mid-training checkpoints, so size `launcher.timeout_min` for a whole cell. `--evaluate <overrides>` scores
the trained runs with another protocol or protocol settings (harness.evaluate) as array tasks: no training.

submitit directly rather than hydra-submitit-launcher: that launcher submits every point of a multirun and
blocks until all end (hydra #2479), with no way to leave out finished or running cells; here the harness picks
the cells and returns after submitting.

`launcher.processes_per_cell: N` runs each cell on N processes (Slurm tasks of one node, one GPU each), DDP as
`torchrun` would (harness.distributed); submitit exports the ranks and the rendezvous address.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import with_profile

from harness.grid import experiment_cells
from harness.errors import ConfigError, cli_errors
from harness.status import cell_state, format_states

PENDING = ("missing", "failed", "diverged", "stale lock", "unknown")


class CellTask:
    """One array task: runs its cells one after another. Checkpointable: on preemption or timeout submitit
    requeues it with the same cells (finished ones are then reused, the interrupted one rerun)."""

    def __init__(self, cells: list[DictConfig]):
        self.cells = cells

    def __call__(self) -> list[dict]:
        from harness.run import run_cell

        self.prepare_process()
        outcomes = [run_cell(cfg) for cfg in self.cells]
        return [{"run_id": o.run_id, "status": o.status, "error": o.error} for o in outcomes]

    def prepare_process(self) -> None:
        import os

        import torch

        if int(self.cells[0].meta.launcher.processes_per_cell) > 1:  # a cell on N processes: rank / world from submitit
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(CellTask(self.cells))


class EvaluationTask(CellTask):
    """One array task that scores trained runs again (harness.evaluate) instead of training: a second protocol."""

    def __init__(self, cells: list[DictConfig], sources: list[str], overrides: list[str]):
        super().__init__(cells)
        self.sources, self.overrides = sources, overrides

    def __call__(self) -> list[dict]:
        from harness.evaluate import evaluate

        self.prepare_process()
        out = []
        for cfg, source in zip(self.cells, self.sources):
            try:
                record = evaluate(source, self.overrides, str(cfg.meta.run.results_dir))
                out.append({"run_id": record["run"]["id"], "status": "finished", "error": None})
            except Exception as exc:  # the next cell is still scored; the error is reported
                out.append({"run_id": source, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return out

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(EvaluationTask(self.cells, self.sources, self.overrides))


def executor_for(launcher: DictConfig):
    import submitit

    if launcher.cluster not in ("local", "slurm"):
        raise ConfigError(f"meta.launcher.cluster={launcher.cluster!r}: use local or slurm")
    folder = Path(str(launcher.folder)) / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=str(launcher.cluster))
    processes = int(launcher.processes_per_cell)
    params = {"timeout_min": int(launcher.timeout_min), "tasks_per_node": processes, "nodes": 1,
              "cpus_per_task": int(launcher.cpus_per_task), "name": "harness"}
    if launcher.cluster == "slurm":
        params.update(slurm_array_parallelism=int(launcher.array_parallelism),
                      gpus_per_node=int(launcher.gpus_per_node) or None,
                      slurm_partition=launcher.partition, slurm_account=launcher.account, slurm_qos=launcher.qos,
                      mem_gb=launcher.mem_gb)
    else:  # (submitit's local executor starts every task at once: array_parallelism is Slurm's)
        params.update(gpus_per_node=int(launcher.gpus_per_node))
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def chunks(cells: list, size: int) -> list[list]:
    if size < 1:
        raise ConfigError(f"meta.launcher.cells_per_task={size}: at least 1")
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def evaluation_sources(overrides: list[str], cells: list[DictConfig]) -> list[str | None]:
    """For each cell, the run id of the same cell as trained (the overrides without the evaluation's), when it
    is finished; else None."""
    _, trained = experiment_cells(overrides)
    if len(trained) != len(cells):
        raise ConfigError("--evaluate: the evaluation's overrides change the experiment's grid")
    return [s["run_id"] if s["state"] == "finished" else None for s in (cell_state(cfg) for cfg in trained)]


def submit(overrides: list[str], dry_run: bool = False, wait: bool = False,
           evaluate: list[str] | None = None) -> dict:
    """Submits the cells to run; returns {"states", "submitted" (run ids), "jobs"}. `evaluate`: overrides of a
    second protocol (`protocol=lmeval`, `protocol.num_beams=1`): the cells are not trained but the trained runs
    of `overrides` are scored with them, as harness.evaluate does."""
    base, cells = experiment_cells(overrides + list(evaluate or []))
    states = [cell_state(cfg) for cfg in cells]
    todo = [(cfg, s) for cfg, s in zip(cells, states) if s["state"] in PENDING]
    print(format_states(base, states))
    launcher = base.meta.launcher
    if evaluate is not None:
        sources = dict(zip([s["run_id"] for s in states], evaluation_sources(overrides, cells)))
        untrained = [s["run_id"] for _, s in todo if sources[s["run_id"]] is None]
        if untrained:
            print(f"[harness] {len(untrained)} cell(s) have no finished trained run to score: left out (submit "
                  "without --evaluate first)", flush=True)
        todo = [(cfg, s) for cfg, s in todo if sources[s["run_id"]] is not None]
    tasks = chunks([cfg for cfg, _ in todo], int(launcher.cells_per_task))
    print(f"[harness] {len(todo)} of {len(cells)} cells to run, as {len(tasks)} array task(s) on launcher "
          f"{launcher.name} ({OmegaConf.to_container(launcher, resolve=True)})", flush=True)
    if dry_run or not tasks:
        return {"states": states, "submitted": [s["run_id"] for _, s in todo] if not dry_run else [], "jobs": []}
    executor = executor_for(launcher)
    with executor.batch():
        if evaluate is not None:
            rid = {id(cfg): s["run_id"] for cfg, s in todo}
            jobs = [executor.submit(EvaluationTask(task, [sources[rid[id(cfg)]] for cfg in task], list(evaluate)))
                    for task in tasks]
        else:
            jobs = [executor.submit(CellTask(task)) for task in tasks]
    ids = [job.job_id for job in jobs]
    array = ids[0].split("_")[0]
    print(f"[harness] submitted job {array} ({len(jobs)} task(s)); follow with `python -m harness.status "
          f"experiment={base.meta.experiment_name}`" + (f", `squeue -j {array}`" if launcher.cluster == "slurm" else "")
          + f"; logs under {Path(str(launcher.folder)) / array}*", flush=True)
    if wait:
        for job in jobs:
            for outcome in job.results()[0]:
                print(f"[harness] {outcome['run_id']}: {outcome['status']}"
                      + (f" ({outcome['error']})" if outcome["error"] else ""), flush=True)
        write_table_when_done(base, cells)
    return {"states": states, "submitted": [s["run_id"] for _, s in todo], "jobs": ids}


def write_table_when_done(base: DictConfig, cells: list[DictConfig]) -> None:
    from harness.tables import make_table

    left = [s for s in (cell_state(cfg) for cfg in cells) if s["state"] != "finished"]
    if left:
        print(f"[harness] {len(left)} cell(s) not finished ({', '.join(sorted({s['state'] for s in left}))}): "
              "no table yet; submit again to run them", flush=True)
        return
    paths = make_table(base, cells)
    print(paths[0].read_text())


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run, wait = "--dry-run" in args, "--wait" in args
    args = [a for a in args if a not in ("--dry-run", "--wait")]
    evaluate = None
    if "--evaluate" in args:  # what follows it: the second protocol's overrides
        at = args.index("--evaluate")
        args, evaluate = args[:at], args[at + 1:]
    start = time.perf_counter()
    with cli_errors():
        submit(with_profile(args), dry_run=dry_run, wait=wait, evaluate=evaluate)
    if wait:
        print(f"[harness] finished in {time.perf_counter() - start:.0f}s wall time", flush=True)


if __name__ == "__main__":
    main()
