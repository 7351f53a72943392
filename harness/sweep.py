"""What a sweep (`harness.run --multirun`, `harness.reproduce`) shares: checking every point before the first
runs, and the closing summary of what became of each cell."""

from __future__ import annotations

import itertools
from typing import Callable, Iterable

from harness.config import compose


def exit_on_sigterm() -> None:
    """SIGTERM (Slurm's preemption and time limit, `kill`) exits through the normal unwinding, so a running cell
    releases its lock at once instead of leaving it to go stale (its failure record is not written: the cell
    did not fail, it was stopped, and a rerun or requeue completes it)."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def sweep_points(argv: Iterable[str]) -> list[list[str]]:
    """The override lists of every point of a Hydra command line (`method=lora,dora method.r=4,8` -> 4 points),
    expanded by Hydra's own override parser; Hydra's own keys (hydra.*) and flags are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-")]
    choices = []
    for override in OverridesParser.create().parse_overrides(args):
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(point) for point in itertools.product(*choices)]


def preflight_points(argv: Iterable[str], check: Callable) -> None:
    """Composes and checks every point of the command line; the first bad one raises its HarnessError."""
    for point in sweep_points(argv):
        check(compose(point))


def print_summary(outcomes: list) -> None:
    """done / reused / running elsewhere / failed, with each failure's error."""
    counts = {status: [o for o in outcomes if o.status == status]
              for status in ("finished", "reused", "running", "failed", "diverged")}
    print(f"[harness] summary: {len(counts['finished'])} done, {len(counts['reused'])} reused, "
          f"{len(counts['running'])} running elsewhere, {len(counts['failed']) + len(counts['diverged'])} failed "
          f"({len(outcomes)} cells)", flush=True)
    for o in counts["failed"] + counts["diverged"]:
        phase = ((o.record or {}).get("failure") or {}).get("phase")
        print(f"[harness]   {o.status}: {o.run_id}" + (f" in phase {phase}" if phase else "") + f": {o.error}",
              flush=True)
    for o in counts["running"]:
        print(f"[harness]   running: {o.run_id}: {o.error}", flush=True)
