"""What every table layout shares: names, the published numbers, finding results, formatting and writing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
from omegaconf import OmegaConf

from harness.config import CONFIG_DIR, run_id
from harness.errors import ConfigError
from harness.results import read_result, result_path

SHORT_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
               "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c", "openbookqa": "OBQA", "gsm8k": "GSM8K",
               "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "rte": "RTE", "stsb": "STS-B",
               "mnli": "MNLI", "qqp": "QQP", "oxford_pets": "Pets", "stanford_cars": "Cars", "cifar10": "CIFAR10",
               "dtd": "DTD", "eurosat": "EuroSAT", "fgvc_aircraft": "FGVC", "resisc45": "RESISC45",
               "cifar100": "CIFAR100", "fashion_mnist": "F-MNIST", "digits": "Digits"}
METHOD_NAMES = {"linear_probe": "LP", "lora": "LoRA", "dora": "DoRA", "pissa": "PiSSA", "milora": "MiLoRA", "neat": "Neat", "full": "Full FT",
                "rosa": "RoSA", "spa": "SpA"}
PROTOCOL_DESCRIPTIONS = {
    "paper_gen": "paper_gen (Alpaca prompt, beam search with 4 beams, 32 new tokens, first-match answer extraction, exact match)",
    "math_greedy": "math_greedy (MetaMath prompt, greedy decoding, the answer after the last 'The answer is:'; GSM8K "
                   "compared as numbers, MATH by is_equiv normalisation)",
    "glue_dev": "glue_dev (GLUE dev sets, the trained head's prediction, metrics computed locally)",
    "image_accuracy": "image_accuracy (top-1 accuracy of the new head on each set's test split, the model's own "
                      "resize and normalisation, no test-time augmentation)",
    "lmeval": "lmeval (lm-eval's own tasks through its Python API on the merged model: acc for multiple choice, "
              "exact match with the strict '#### N' filter for gsm8k; shots as in the result files)",
}


def published(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "published" / f"{name}.yaml"), resolve=True)


def method_label(result: Mapping) -> str:
    """The name a table shows: a preset's label (Neat-S) or the method's name (LoRA)."""
    options = (result.get("config") or {}).get("method") or {}
    return options.get("label") or METHOD_NAMES.get(result["method"], result["method"])


def label_key(result: Mapping) -> str:
    """The key of a run's paper row: the preset's label (neat-s) or the method (lora)."""
    options = (result.get("config") or {}).get("method") or {}
    return str(options["label"]).lower() if options.get("label") else result["method"]


def method_order(method: str) -> int:
    return list(METHOD_NAMES).index(method) if method in METHOD_NAMES else len(METHOD_NAMES)


def params_text(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


FAILED = "failed"  # what a table shows in the cells of a run that failed or diverged


def finished(result: Mapping) -> bool:
    return result.get("status", "finished") == "finished"


def collect(results_dir: str | Path, cells: Iterable) -> tuple[list[Mapping], list[str]]:
    """The result of every grid cell that has one (found by run id; failure records included, their cells
    show `failed`), and the ids still missing."""
    found, absent = [], []
    for cfg in cells:
        rid = run_id(cfg)
        path = result_path(results_dir, rid)
        if path.is_file():
            found.append(read_result(path))
        else:
            absent.append(rid)
    protocols = {r["protocol"] for r in found}
    if len(protocols) > 1:
        raise ConfigError(f"results mix protocols {sorted(protocols)}; a table never mixes them")
    return found, absent


def sizes_of_test_sets(results: list[Mapping], datasets: list[str]) -> tuple[str, list[str]]:
    """"BoolQ 40, PIQA 40 (80 in all)" and the short names of the sets no result has."""
    sizes = {}
    for r in results:
        for d, m in (r.get("metrics") or {}).items():
            sizes[d] = m["n"]
    per_set = ", ".join(f"{SHORT_NAMES.get(d, d)} {sizes[d]}" for d in datasets if d in sizes) or "none"
    return f"{per_set} ({sum(sizes.values())} in all)", [SHORT_NAMES.get(d, d) for d in datasets if d not in sizes]


def _cell(column: str, value, signed: bool) -> str:
    if missing(value):
        return "-" if column not in ("params", "seeds") else ""
    if column == "step s":
        return f"{value:.2f}"
    if column == "seeds":
        return str(int(value))
    if isinstance(value, float):
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    return str(value)


def write(df: pd.DataFrame, text: str, out_dir: Path, name: str) -> list[Path]:
    """<name>.md (caption + table), .csv (the numbers) and .tex. Rows labelled "Δ..." and columns named
    "Δ..." show signed numbers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = df.copy().astype(object)
    delta_rows = [str(r).startswith("Δ") for r in shown["row"]] if "row" in shown else [False] * len(shown)
    for col in shown.columns:
        shown[col] = [_cell(col, v, s or str(col).startswith("Δ")) for v, s in zip(shown[col], delta_rows)]
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.csv", out_dir / f"{name}.tex"]
    paths[0].write_text(f"{text}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n")
    df.to_csv(paths[1], index=False, float_format="%.2f")
    paths[2].write_text(shown.to_latex(index=False, caption=text, label=f"tab:{name}", escape=True))
    return paths
