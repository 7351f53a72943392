"""GLUE dev-set scoring (SPEC 2.4): the head's argmax (or STS-B's regression value) against the labels.

Metrics are computed here with scikit-learn / scipy, not `evaluate.load` (which fetches its scripts from the
hub): CoLA Matthews correlation, STS-B Pearson and Spearman, MRPC and QQP accuracy and F1, the rest accuracy.
`accuracy` in the result is the task's headline metric x 100 (what a table shows; CoLA's is Matthews), and
every metric is recorded under its own name as well.
"""

from __future__ import annotations

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

    def summarize(self, name, rows):
        values = glue_metrics(name, [r["prediction"] for r in rows], [r["label"] for r in rows])
        headline = GLUE_SETS[name].metric
        # every metric x 100, then `accuracy` set to the headline one (for CoLA: Matthews, not accuracy)
        return {**{k: 100.0 * v for k, v in values.items()}, "accuracy": 100.0 * values[headline],
                "metric": headline, "n": len(rows)}
