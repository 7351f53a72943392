"""GLUE dev-set scoring (SPEC 2.4): the head's argmax (or STS-B's regression value) against the labels.

Metrics are computed here with scikit-learn / scipy, not `evaluate.load` (which fetches its scripts from the
hub): CoLA Matthews correlation, STS-B Pearson and Spearman, MRPC and QQP accuracy and F1, the rest accuracy.
`accuracy` in the result is the task's headline metric x 100 (what a table shows; CoLA's is Matthews), and
every metric is recorded under its own name as well.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.benchmarks.base import Scorer
from harness.benchmarks.glue.data import GLUE_SETS, collator, tokenize


def glue_metrics(name: str, predictions: list, labels: list) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if name == "stsb":
        return {"pearson": float(pearsonr(predictions, labels)[0]), "spearman": float(spearmanr(predictions, labels)[0])}
    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    if name == "cola":
        metrics["matthews"] = float(matthews_corrcoef(labels, predictions))
    if name in ("mrpc", "qqp"):
        metrics["f1"] = float(f1_score(labels, predictions))
    return metrics


# --- the headline metrics on many resamples at once (a table's bootstrap: ~1000 resamples per set) -------------
# Written here with numpy: scikit-learn's and scipy's functions take one sample per call, and their input checks
# cost ~7 ms a call (a GLUE table's intervals and comparisons spent minutes in them). The same formulas as
# sklearn's `accuracy_score` / `matthews_corrcoef` and scipy's `pearsonr` (tests/test_glue.py compares them on
# real dev labels); each takes (resamples, n) predictions and labels and returns one value per resample.

def accuracy_of_resamples(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (predicted == labels).mean(axis=1)


def matthews_of_resamples(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """sklearn's multiclass Matthews from the confusion counts: (c·s - t·p) / sqrt((s² - p·p)(s² - t·t)), 0 where
    a side is constant."""
    classes = np.unique(np.concatenate([np.unique(predicted), np.unique(labels)]))
    true_counts = np.stack([(labels == k).sum(axis=1) for k in classes], axis=1).astype(np.float64)
    predicted_counts = np.stack([(predicted == k).sum(axis=1) for k in classes], axis=1).astype(np.float64)
    correct = (predicted == labels).sum(axis=1).astype(np.float64)
    samples = float(labels.shape[1])
    cov_tp = correct * samples - (true_counts * predicted_counts).sum(axis=1)
    cov_pp = samples**2 - (predicted_counts**2).sum(axis=1)
    cov_tt = samples**2 - (true_counts**2).sum(axis=1)
    denominator = cov_tt * cov_pp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator == 0, 0.0, cov_tp / np.sqrt(denominator))


def pearson_of_resamples(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson's r per resample; NaN where a side is constant (as scipy's, which warns)."""
    x = predicted - predicted.mean(axis=1, keepdims=True)
    y = labels - labels.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


OF_RESAMPLES = {"accuracy": accuracy_of_resamples, "matthews": matthews_of_resamples,
                "pearson": pearson_of_resamples}


@torch.no_grad()
def predict(model, tokenizer, records: list[dict], batch_size: int, max_length: int, progress: bool, desc: str) -> list:
    collate = collator(tokenizer)
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, disable=not progress, leave=False):
        features = [tokenize(r, tokenizer, max_length) for r in records[start:start + batch_size]]
        for f in features:
            f.pop("labels")
        batch = {k: v.to(device) for k, v in collate(features).items()}
        logits = model(**batch).logits.float()
        out.extend(logits[:, 0].tolist() if logits.shape[-1] == 1 else logits.argmax(-1).tolist())
    return out


class GlueDev(Scorer):
    name = "glue_dev"
    # 2: the predictions file holds each set's rows of the epoch the result reports (best_epoch), not the last's
    behaviour_version = 2

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        predicted = predict(model, tokenizer, records, int(protocol["batch_size"]), int(protocol["max_length"]),
                            progress, f"eval {name}")
        labels = [r["label"] for r in records]
        rows = [{"prediction": p, "label": l, "correct": p == l} for p, l in zip(predicted, labels)]
        return self.summarize(name, rows), rows

    def headline_of_resamples(self, name, rows, index):
        predicted = np.asarray([r["prediction"] for r in rows], dtype=np.float64)[index]
        labels = np.asarray([r["label"] for r in rows], dtype=np.float64)[index]
        return 100.0 * OF_RESAMPLES[GLUE_SETS[name].metric](predicted, labels)

    def summarize(self, name, rows):
        values = glue_metrics(name, [r["prediction"] for r in rows], [r["label"] for r in rows])
        headline = GLUE_SETS[name].metric
        # every metric x 100, then `accuracy` set to the headline one (for CoLA: Matthews, not accuracy)
        return {**{k: 100.0 * v for k, v in values.items()}, "accuracy": 100.0 * values[headline],
                "metric": headline, "n": len(rows)}
