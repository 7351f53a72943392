"""`python -m harness.plan experiment=<name> gpu=<conf/gpu name> [meta.gpus=N] [meta.plan.json=path]` (see harness.plan)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.errors import cli_errors


def main(argv: list[str] | None = None) -> None:
    from harness.config import compose
    from harness.plan.experiment import plan, with_paper_profile
    from harness.plan.table import as_json, markdown

    args = sys.argv[1:] if argv is None else argv
    with cli_errors():
        result = plan(args)
        target = compose(with_paper_profile(list(args))).meta.plan.get("json")
    print(markdown(result))
    if target:
        Path(target).write_text(json.dumps(as_json(result), indent=1, default=str))
        print(f"[harness] plan written to {target}")


if __name__ == "__main__":
    main()
