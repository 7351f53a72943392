"""Forgetting: how far fine-tuning moved a model on general text, measured on a finished run's saved adapter.

    python -m harness.forgetting <run id | results/adapters/<run id>> [text=wikitext103] [tokens=100000] [window=1024]
    python -m harness.forgetting experiment=table2 [profile=mini] [text=pydoc_topics]   # every finished cell, and
                                                             # results/tables/table2_forgetting.{md,csv,tex}

Two numbers per run, on the same token windows of a held-out text:

- `forgetting_ce`, MiLoRA's (section 5.4, Table 8, after Kalajdzievski 2024): the cross-entropy of the fine-tuned
  model's next-token distribution against the base model's, -sum_v p_base(v) log p_tuned(v), averaged over the
  predicted positions, on the WikiText-103 test set (LoRA 3.24, PiSSA 6.07, MiLoRA 2.54 on LLaMA2-7B tuned on
  MetaMathQA).
- `gold_ce`, peft's method comparison's: the fine-tuned model's cross-entropy on the text's own next tokens, beside
  the base model's (`base_gold_ce`). As peft #2925 / #3419 found, the labels are shifted by one (position t predicts
  token t+1), and the base is a separately loaded copy, never the adapted model with its adapter disabled
  (PiSSA and MiLoRA rewrite the base weights, so "adapter off" is not the base model).

Texts: `wikitext103`, the hub's Salesforce/wikitext `wikitext-103-raw-v1` test split (fails fast offline, naming
it); `pydoc_topics`, offline, the topics of the Python reference manual that CPython ships as `pydoc_data.topics`
(the Python Software Foundation License 2.0): ~90k tokens of English technical prose, for machines without the hub.
A local copy of the text also works: `text=/path/to/wiki.test.raw`. Nothing is retrained: the measurement is a
side result (`harness.results.SideResult`) beside the run's, `<run id>.forgetting-<text>.json`, and a cell
already measured is not measured again. Default
size: 100k tokens in windows of 1024 (the paper profile), 4096 tokens in windows of 512 (mini).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from harness import benchmarks, cli_args
from harness.errors import ConfigError, cli_errors
from harness.evaluate import evaluation_config, locate
from harness.recipe import Recipe
from harness.artifacts import write_side_result
from harness.results import SideResult, read_side_result, side_result_path

TEXTS = {
    "wikitext103": "WikiText-103 test split (Salesforce/wikitext, wikitext-103-raw-v1; CC BY-SA 3.0)",
    "pydoc_topics": "Python reference manual topics shipped with CPython (pydoc_data.topics; PSF License 2.0)",
}
WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1")


def load_text(name: str) -> str:
    if Path(name).is_file():
        return Path(name).read_text()
    if name == "pydoc_topics":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if name == "wikitext103":
        from harness.offline import ensure_hub_available

        ensure_hub_available(WIKITEXT[0], "dataset", what="text")
        import datasets

        split = datasets.load_dataset(*WIKITEXT, split="test")
        return "".join(split["text"])
    raise ConfigError(f"text={name!r}: use one of {list(TEXTS)}, or the path of a text file")


def token_windows(tokenizer, text: str, window: int, max_tokens: int) -> list[torch.Tensor]:
    """Non-overlapping windows of `window` tokens from the start of the text, `max_tokens` in all."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return [torch.tensor(ids[i:i + window]) for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]


@torch.no_grad()
def measure(base, tuned, windows: list[torch.Tensor], device) -> dict:
    """forgetting_ce, gold_ce and base_gold_ce (nats per predicted token) over `windows`."""
    base.eval()
    tuned.eval()
    forgetting = gold = base_gold = 0.0
    count = 0
    for ids in windows:
        batch = ids.unsqueeze(0).to(device)
        # position t predicts token t + 1: the last position has no target
        base_logp = torch.log_softmax(base(input_ids=batch).logits[0, :-1].float(), dim=-1)
        tuned_logp = torch.log_softmax(tuned(input_ids=batch).logits[0, :-1].float(), dim=-1)
        targets = batch[0, 1:]
        forgetting += float(-(base_logp.exp() * tuned_logp).sum())
        gold += float(-tuned_logp.gather(1, targets[:, None]).sum())
        base_gold += float(-base_logp.gather(1, targets[:, None]).sum())
        count += targets.numel()
    return {"forgetting_ce": forgetting / count, "gold_ce": gold / count, "base_gold_ce": base_gold / count,
            "tokens": count}


def text_name(text: str) -> str:
    """The name a measurement on `text` is filed under: the text's name, or a file's stem."""
    return Path(text).stem if Path(text).is_file() else text


def forgetting_path(results: Path, run_id: str, text: str) -> Path:
    return side_result_path(results, run_id, "forgetting", text_name(text))


SIZES = {"paper": (100_000, 1024), "mini": (4096, 512)}  # (tokens, window) by profile


def sizes(profile: str, tokens: int | None, window: int | None) -> tuple[int, int]:
    """The tokens and window asked for, else the profile's."""
    default_tokens, default_window = SIZES.get(profile, SIZES["paper"])
    return tokens or default_tokens, window or default_window


def forgetting(target: str, text: str = "wikitext103", tokens: int | None = None, window: int | None = None,
               results_dir: str | None = None) -> dict:
    """Measures the run's saved adapter against its base model on `text`; writes and returns the record."""
    source, results, adapter = locate(target, results_dir)
    rid = source["run"]["id"]
    cfg = evaluation_config(source["run"]["config"], [], results)
    tokens, window = sizes(str(cfg.meta.profile.name), tokens, window)
    if benchmarks.get(cfg.task.name).model_head(cfg.task) is not None:
        raise ConfigError(f"run {rid} trained a {cfg.task.name} classifier: forgetting is measured on language models")
    text_body = load_text(text)  # (before minutes of model loading: an unavailable text fails first)
    recipe = Recipe(cfg)
    placement = recipe.placement
    start = time.perf_counter()
    base, tokenizer = recipe.load()  # (from the run's seed: a random-weight model is rebuilt as the run built it)
    tuned = recipe.saved(recipe.load()[0], adapter).model
    windows = token_windows(tokenizer, text_body, window, tokens)
    with placement.autocast():
        numbers = measure(base.to(placement.device), tuned, windows, placement.device)
    record: SideResult = {
        "kind": "forgetting", "name": text_name(text), "run_id": rid, "method": source["run"]["method"],
        "model": source["run"]["model"], "values": numbers,
        "settings": {"text": text, "text_source": TEXTS.get(text, f"the file {text}"), "window": window,
                     "max_tokens": tokens},
        "seconds": round(time.perf_counter() - start, 2), "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_side_result(results, record)
    print(f"[harness] {rid}: forgetting CE {numbers['forgetting_ce']:.3f}, gold CE {numbers['gold_ce']:.3f} "
          f"(base {numbers['base_gold_ce']:.3f}) on {numbers['tokens']:,} tokens of {text} -> {path}", flush=True)
    return record


def read_forgetting(results: Path, run_id: str, text: str) -> SideResult | None:
    return read_side_result(forgetting_path(results, run_id, text))


def experiment_table(overrides: list[str], text: str, tokens: int | None, window: int | None) -> list[Path]:
    """Measures every finished cell of the experiment that has no measurement on `text` yet, then writes
    <experiment>_forgetting.{md,csv,tex}: ours beside MiLoRA Table 8's (conf/published/forgetting.yaml)."""
    import pandas as pd

    from harness.config import with_profile

    from harness.identity import run_id

    from harness.grid import experiment_cells
    from harness.methods import display
    from harness.results import previous_result, result_path
    from harness.tables.common import published, write

    base, cells = experiment_cells(with_profile(overrides))
    results = Path(base.meta.run.results_dir)
    paper = published("forgetting")
    rows = []
    for cfg in cells:
        rid = run_id(cfg)
        record = previous_result(result_path(results, rid))
        if record is None or record["status"] != "finished":
            print(f"[harness] {rid}: no finished result, not measured", flush=True)
            continue
        found = read_forgetting(results, rid, text)
        measured_at = (found["settings"].get("max_tokens"), found["settings"].get("window")) if found else None
        if measured_at != sizes(str(cfg.meta.profile.name), tokens, window):
            found = forgetting(rid, text, tokens, window, str(results))  # (none yet, or measured at another size)
        numbers = found["values"]
        label = display.label(cfg.method.name, dict(cfg.method))
        theirs = (paper["rows"].get(cfg.model.get("paper_name") or paper["reference_model"]) or {}).get(cfg.method.name)
        rows.append({"model": cfg.model.name, "method": label, "seed": cfg.seed, "forgetting CE": numbers["forgetting_ce"],
                     "paper forgetting CE": theirs,
                     "Δ forgetting CE": numbers["forgetting_ce"] - theirs if theirs is not None else None,
                     "gold CE": numbers["gold_ce"], "base gold CE": numbers["base_gold_ce"],
                     "Δ gold CE": numbers["gold_ce"] - numbers["base_gold_ce"], "tokens": numbers["tokens"]})
    df = pd.DataFrame(rows, columns=["model", "method", "seed", "forgetting CE", "paper forgetting CE", "Δ forgetting CE",
                                     "gold CE", "base gold CE", "Δ gold CE", "tokens"])
    shown = df.astype(object)
    for column in shown.columns:
        if "CE" in column:
            shown[column] = [("-" if v is None or v != v else f"{v:+.3f}" if column.startswith("Δ") else f"{v:.3f}")
                             for v in shown[column]]
    source = TEXTS.get(text, f"the file {text}")
    caption = (f"Forgetting (MiLoRA Table 8 layout) of the {base.meta.experiment_name} cells, profile {base.meta.profile.name}: "
               f"'forgetting CE' is the cross-entropy of the tuned model's next-token distribution against the base "
               f"model's (MiLoRA section 5.4, after Kalajdzievski 2024), 'gold CE' the tuned model's loss on the text's "
               f"own next tokens beside the base model's (peft's method comparison), nats per token, on {source}. "
               f"Paper rows: {paper['source']}, {paper['reference_model']}; a model without its own row is compared "
               f"with it.")
    return write(df, caption, results / "tables", f"{base.meta.experiment_name}_forgetting", shown)


USAGE = ("usage: python -m harness.forgetting <run id | results/adapters/<run id>> [text=wikitext103|pydoc_topics|"
         "<file>] [tokens=N] [window=N] [meta.run.results_dir=results]\n"
         "       python -m harness.forgetting experiment=<name> [overrides] [text=...] [tokens=N] [window=N]")


def main(argv: list[str] | None = None) -> None:
    with cli_errors():
        command = cli_args.parse(sys.argv[1:] if argv is None else argv)
        text, tokens, window = str(command.take("text", "wikitext103")), command.take("tokens"), command.take("window")
        tokens, window = int(tokens) if tokens else None, int(window) if window else None
        if any(o.key_or_group == "experiment" for o in command.overrides) and not command.positional:
            paths = experiment_table(command.lines(), text, tokens, window)
            print(paths[0].read_text())
            return
        if len(command.positional) != 1:
            raise ConfigError(USAGE)
        results_dir = command.take("meta.run.results_dir")
        if command.overrides:
            raise ConfigError(f"unknown option(s) {command.lines()}: use text=, tokens=, window=, meta.run.results_dir=")
        forgetting(command.positional[0], text, tokens, window, str(results_dir) if results_dir else None)


if __name__ == "__main__":
    main()
