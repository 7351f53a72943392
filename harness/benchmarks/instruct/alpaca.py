"""AlpacaEval (MiLoRA Table 3's AlpacaEval 2.0 columns): the model's answers to AlpacaEval's instructions, greedy,
in the Tulu chat format it was trained in, as alpaca_eval's model outputs ({instruction, output, generator,
dataset}); the win rates against the reference come from the `alpaca_eval` package's judge, run only when one is
configured (`protocol.alpaca_eval.annotators_config`: an alpaca_eval annotator, which needs its API key; or
`protocol.alpaca_eval.local_judge`: a local model, harness.benchmarks.instruct.judge). Without one the outputs are
kept in the predictions file, the set's metrics say "judge not run", and its table cell stays empty: nothing
stands in for the judge.

    python -m harness.benchmarks.instruct.alpaca <run id> [annotators_config=<name or path> | local_judge=<model>]
                                                  [reference_outputs=<file>] [metric=length_controlled|win_rate]

writes `<run id>.alpaca_eval.json` (alpaca_eval's `--model_outputs` file) from a finished run's predictions and,
with an annotator, scores it there and then without regenerating.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import Scorer
from harness.benchmarks.instruct import judge
from harness.benchmarks.instruct.data import tulu_format
from harness.errors import ConfigError
from harness.generation import generate

NOT_RUN = "judge not run"
JUDGE_FAILED = "judge failed"


def model_outputs(rows: list[dict]) -> list[dict]:
    """Prediction rows as alpaca_eval's model outputs (its `dataset` field is kept as `alpaca_dataset` in a row,
    whose `dataset` names the harness's test set)."""
    return [{"instruction": r["instruction"], "output": r["output"], "generator": r["generator"],
             "dataset": r.get("alpaca_dataset", "alpaca_eval")} for r in rows]


def judged(rows: list[dict], settings: Mapping) -> dict:
    """alpaca_eval's leaderboard numbers for these model outputs (x 100 as the paper prints them), with how many of
    the judge's answers it could read (`judged`; an unreadable one counts for neither side)."""
    try:
        import alpaca_eval  # noqa: F401
    except ImportError:
        raise ConfigError("a judge is configured (protocol.alpaca_eval.annotators_config / local_judge) but the "
                          "alpaca_eval package is not installed",
                          "pip install alpaca_eval (and the judge's API key, e.g. OPENAI_API_KEY)") from None
    import tempfile
    from pathlib import Path

    import pandas as pd
    from alpaca_eval import evaluate

    outputs = pd.DataFrame(model_outputs(rows))
    with tempfile.TemporaryDirectory(prefix="harness-judge-") as directory:
        kwargs = judge.evaluate_kwargs(settings, Path(directory))
        try:
            leaderboard, _ = evaluate(model_outputs=outputs, **kwargs)
        except TypeError as exc:  # alpaca_eval's rounding of the win rate when no answer could be read
            if "NoneType" not in str(exc):
                raise
            raise ConfigError(f"the judge's answers to all {len(rows)} comparisons matched neither output (its "
                              "completion parser found no preference)", "use a stronger judge") from None
    row = leaderboard.loc[rows[0]["generator"]]
    metrics = {"win_rate": float(row["win_rate"]), "judged": int(row["n_total"])}
    if "length_controlled_winrate" in row and not math.isnan(float(row["length_controlled_winrate"])):
        metrics["length_controlled_winrate"] = float(row["length_controlled_winrate"])
    return metrics


def summary(rows: list[dict], judge: dict | None) -> dict:
    if not judge:
        return {"accuracy": float("nan"), "metric": NOT_RUN, "n": len(rows), "judge": NOT_RUN}
    headline = "length_controlled_winrate" if "length_controlled_winrate" in judge else "win_rate"
    return {"accuracy": judge[headline], "metric": headline, "n": len(rows), **judge}


class AlpacaEvalOutputs(Scorer):
    """The model's AlpacaEval outputs; the judge's win rates where `protocol.alpaca_eval.annotators_config` is set."""

    name = "alpaca_eval"
    engines = ("hf", "vllm")  # greedy generate / sample only (harness.engine)

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        settings = dict(protocol.get("alpaca_eval") or {})
        prompts = [tulu_format([{"role": "user", "content": r["instruction"]}]) for r in records]
        decoded = generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=int(settings["max_new_tokens"]),
                           batch_size=int(settings["batch_size"]), progress=progress, desc=f"eval {name}")
        generator = str(settings.get("generator") or "harness")
        rows = [{"instruction": r["instruction"], "output": text.removeprefix(prompt).strip(), "generator": generator,
                 "alpaca_dataset": r.get("dataset", "alpaca_eval"), "correct": None}
                for r, prompt, text in zip(records, prompts, decoded)]
        return summary(rows, None), rows

    def summarize(self, name, rows):
        return summary(rows, None)

    def check(self, protocol, task):
        """A configured judge's settings, before training: the package, the hub where they need it, the local
        judge's name."""
        settings = dict(protocol.get("alpaca_eval") or {})
        if judge.judge_configured(settings):
            judge.check(settings)

    def evaluate(self, model, processor, test_sets, protocol, task, progress=True):
        """The outputs of every set (each process generates its shard), then the judge once, on all of them."""
        from harness import distributed

        metrics, predictions = super().evaluate(model, processor, test_sets, protocol, task, progress)
        settings = dict(protocol.get("alpaca_eval") or {})
        if judge.judge_configured(settings):
            for name, rows in predictions.items():
                seconds = metrics[name]["seconds"]
                metrics[name] = {**distributed.on_main(lambda: judged_or_failure(rows, settings)), "seconds": seconds}
        return metrics, predictions


def judged_or_failure(rows: list[dict], settings: Mapping) -> dict:
    """The set's metrics with the judge's numbers; a judge that fails after the outputs are generated (its API,
    answers it cannot read) fails only itself: the outputs are kept in the run's predictions, the metrics say why,
    and `python -m harness.benchmarks.instruct.alpaca <run id>` judges them again."""
    from harness.errors import one_line

    try:
        return summary(rows, judged(rows, settings))
    except Exception as exc:  # noqa: BLE001 - any failure of the judge's package or API
        reason = one_line(f"{type(exc).__name__}: {exc}")
        print(f"[harness] the AlpacaEval judge failed ({reason}); the outputs are kept for "
              "`python -m harness.benchmarks.instruct.alpaca <run id>`", flush=True)
        return {"accuracy": float("nan"), "metric": JUDGE_FAILED, "n": len(rows), "judge": f"failed: {reason}"}


def judge_name(options: dict) -> str:
    """What a judged side result is filed under: the local judge's or the annotators config's name."""
    named = options.get("local_judge") or options.get("annotators_config") or "judge"
    return Path(str(named)).stem


def main(argv=None) -> int:
    """`<run id> [annotators_config=...] [reference_outputs=...]`: writes the run's alpaca_eval outputs file, and
    judges it when an annotator is named."""
    from harness import cli_args
    from harness.artifacts import write_side_result
    from harness.config import compose
    from harness.errors import cli_errors
    from harness.results import predictions_path, read_predictions

    argv = list(sys.argv[1:] if argv is None else argv)
    with cli_errors():
        command = cli_args.parse(argv)
        if len(command.positional) != 1:
            raise ConfigError("usage: python -m harness.benchmarks.instruct.alpaca <run id> [annotators_config=... | "
                              "local_judge=...] [reference_outputs=...] [metric=...] [meta.run.results_dir=results]")
        run_id = command.positional[0]
        results_dir = command.take("meta.run.results_dir") or compose([]).meta.run.results_dir
        options = {o.key_or_group: o.value() for o in command.overrides}
        rows = read_predictions(results_dir, run_id).get("alpaca_eval")
        path = predictions_path(results_dir, run_id)
        if not rows:
            raise ConfigError(f"{path}: no alpaca_eval predictions (was the run scored on task.datasets with alpaca_eval?)")
        rows = [{**r, "generator": run_id} for r in rows]
        out = path.with_name(f"{run_id}.alpaca_eval.json")
        out.write_text(json.dumps(model_outputs(rows), indent=1))
        print(f"[harness] wrote {out} ({len(rows)} outputs; `alpaca_eval --model_outputs {out}` judges it)")
        if judge.judge_configured(options):
            numbers = summary(rows, judged(rows, options))
            record = {"kind": "alpaca_eval", "name": judge_name(options), "run_id": run_id,
                      "values": numbers, "settings": options, "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            print(f"[harness] wrote {write_side_result(Path(str(results_dir)), record)}")
            print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
