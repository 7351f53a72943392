"""What an experiment costs before it runs: per cell, its peak training memory by part on a GPU, whether it fits
and the smallest change that makes it fit, its training tokens and evaluation work from its real data, and the
hours they take at a stated MFU; for the whole grid, GPU-hours and the wall time on the GPUs given.

    python -m harness.plan experiment=table1 gpu=h100-80gb            # one GPU
    python -m harness.plan experiment=table2 gpu=a100-40gb meta.gpus=8     # wall time on 8
    make plan-table1 ARGS="gpu=h200"

The profile is the paper's unless one is named. `harness.plan.memory` traces the step, `harness.plan.work` reads
the data, `harness.plan.cost` turns both into hours; the assumptions are the `plan:` keys of conf/config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.plan.cost import Fit, Hours, schedule
from harness.plan.work import Work


@dataclass
class CellPlan:
    model: str
    method: str
    task: str
    runs: int                # the cell's seeds (each a run)
    fit: Fit
    work: Work
    hours: Hours             # one run, on fit.gpus GPUs
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return self.hours.total * self.fit.gpus * self.runs


@dataclass
class Plan:
    experiment: str
    profile: str
    gpu: object              # harness.gpus.GpuSpec
    gpus: int
    mfu: float
    mfu_source: str
    cells: list[CellPlan]

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_hours for c in self.cells)

    @property
    def wall_hours(self) -> float:
        runs = [(c.hours.total, c.fit.gpus) for c in self.cells for _ in range(c.runs)]
        return schedule(runs, self.gpus)
