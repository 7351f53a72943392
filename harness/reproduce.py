"""Runs every cell of an experiment's grid for the active profile, then writes its table.

    python -m harness.reproduce experiment=table1                # profile chosen from the machine
    python -m harness.reproduce experiment=table1 profile=mini task.test_subset=20
Finished runs are reused (their result files exist), so an interrupted reproduction resumes.
"""

from __future__ import annotations

import sys
import time

from harness.config import experiment_cells, with_profile
from harness.run import run_one
from harness.tables import make_table, profile_description


def main(argv: list[str] | None = None) -> None:
    overrides = with_profile(sys.argv[1:] if argv is None else argv)
    try:
        base, cells = experiment_cells(overrides)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(f"[harness] {base.experiment_name}: {len(cells)} runs, profile {base.profile.name}: {profile_description(base)}",
          flush=True)
    start = time.perf_counter()
    for i, cfg in enumerate(cells, 1):
        print(f"[harness] [{i}/{len(cells)}] model={cfg.model.name} method={cfg.method.name}", flush=True)
        run_start = time.perf_counter()
        run_one(cfg)
        print(f"[harness] [{i}/{len(cells)}] done in {time.perf_counter() - run_start:.0f}s", flush=True)
    paths = make_table(base, cells)
    print(paths[0].read_text())
    print(f"[harness] {base.experiment_name} finished in {time.perf_counter() - start:.0f}s wall time", flush=True)


if __name__ == "__main__":
    main()
