"""Runs every cell of an experiment's grid for the active profile, then writes its table.

    python -m harness.reproduce experiment=table1                # profile chosen from the machine
    python -m harness.reproduce experiment=table1 profile=mini task.test_subset=20

Every cell is checked before the first one runs (a bad cell fails in seconds, nothing written). Finished runs
are reused (their result files exist), so an interrupted reproduction resumes; a failed cell leaves its failure
record and the grid goes on; a cell locked by another live process is skipped. The table is written when no
cell is still running elsewhere; the exit status is non-zero when a cell failed.
"""

from __future__ import annotations

import os
import sys
import time

from harness import distributed
from harness.config import with_profile
from harness.grid import experiment_cells
from harness.errors import cli_errors, exit_status
from harness.preflight import check
from harness.run import run_cell
from harness.sweep import exit_on_sigterm, print_summary
from harness.tables import make_table, profile_description


def main(argv: list[str] | None = None) -> None:
    import torch

    exit_on_sigterm()
    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))
    overrides = with_profile(sys.argv[1:] if argv is None else argv)
    with cli_errors():
        base, cells = experiment_cells(overrides)
        for cfg in cells:
            check(cfg)
    print(f"[harness] {base.meta.experiment_name}: {len(cells)} runs, profile {base.meta.profile.name}: {profile_description(base)}",
          flush=True)
    start = time.perf_counter()
    outcomes = []
    for i, cfg in enumerate(cells, 1):
        print(f"[harness] [{i}/{len(cells)}] model={cfg.model.name} method={cfg.method.name}", flush=True)
        run_start = time.perf_counter()
        with cli_errors():  # a damaged result file stops the reproduction: it is never overwritten
            outcomes.append(run_cell(cfg))
        print(f"[harness] [{i}/{len(cells)}] {outcomes[-1].status} in {time.perf_counter() - run_start:.0f}s", flush=True)
    print_summary(outcomes)
    running = [o for o in outcomes if o.status == "running"]
    if running:
        print(f"[harness] {len(running)} cell(s) still running elsewhere: the table is written when they finish "
              f"(`make table-{base.meta.experiment_name.replace('_', '-')}` or rerun this command)", flush=True)
    elif distributed.is_main():  # (several processes run each cell together; the main one writes the table)
        with cli_errors():
            paths = make_table(base, cells)
        print(paths[0].read_text())
    print(f"[harness] {base.meta.experiment_name} finished in {time.perf_counter() - start:.0f}s wall time", flush=True)
    failed = [o for o in outcomes if o.status in ("failed", "diverged")]
    if failed:
        raise SystemExit(max(exit_status(o.exception) for o in failed))


if __name__ == "__main__":
    main()
