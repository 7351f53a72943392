"""Writes tests/golden_run_ids.json: the config identity of every cell of every experiment, mini and paper profiles
(issue 25: a redesign must land with run ids unchanged; tests/test_identity.py compares against this file).

The identity is the hash of the semantic config without the inputs' content (`semantic_config(with_inputs=False)`):
the inputs are hub revisions on the paper profile, which cannot be resolved offline. A change that moves one of
these hashes changes every run id of that cell; rewrite the file only with a behaviour change named in the note:

    .venv/bin/python tools/golden_run_ids.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden_run_ids.json"


PROFILES = ("mini", "paper")


def cell_identity(cfg) -> str:
    from harness.identity import semantic_config, task_label

    payload = json.dumps(semantic_config(cfg, with_inputs=False), sort_keys=True, default=str)
    return f"{task_label(cfg.task)}-{cfg.model.name}-{cfg.method.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def grid_identities(experiment: str, profile: str) -> list[str]:
    """Each cell's "<task>-<model>-<method>-<digest>", in grid order; the paper profile at its first seed only
    (its other seeds differ by `seed` alone)."""
    from harness.grid import experiment_cells

    _, cells = experiment_cells([f"experiment={experiment}", f"profile={profile}",
                                 *(["meta.seeds=null"] if profile == "paper" else [])])
    return [cell_identity(cfg) for cfg in cells]


def config_identities() -> dict[str, list[str]]:
    """"<experiment>/<profile>" -> the grid's identities."""
    from harness.config import CONFIG_DIR

    return {f"{path.stem}/{profile}": grid_identities(path.stem, profile)
            for path in sorted((CONFIG_DIR / "experiment").glob("*.yaml")) for profile in PROFILES}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    identities = config_identities()
    GOLDEN.write_text(json.dumps(identities, indent=1) + "\n")
    print(f"wrote {GOLDEN.relative_to(ROOT)}: {sum(map(len, identities.values()))} cells in {len(identities)} grids")


if __name__ == "__main__":
    main()
