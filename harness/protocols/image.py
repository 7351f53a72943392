"""Image classification scoring (SPEC 2.5): top-1 accuracy of the head's argmax on the test split, each image
preprocessed as for training minus the augmentation (the model's own resize and normalisation)."""

from __future__ import annotations

import time
from typing import Mapping

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def predict(model, processor, records: list[dict], batch_size: int, progress: bool, desc: str,
            task_cfg: Mapping | None = None) -> list[int]:
    from harness.tasks.image import collator

    collate = collator(processor, task_cfg, train=False)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[int] = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collate([{"image": r["image"], "labels": r["label"]} for r in records[start:start + batch_size]])
        logits = model(pixel_values=batch["pixel_values"].to(device, dtype)).logits
        out.extend(logits.argmax(-1).tolist())
    return out


def evaluate(model, processor, test_sets: Mapping[str, list[dict]], protocol: Mapping, progress: bool = True,
             task_cfg: Mapping | None = None):
    metrics, predictions = {}, {}
    for name, records in test_sets.items():
        start = time.perf_counter()
        predicted = predict(model, processor, records, int(protocol["batch_size"]), progress, f"eval {name}", task_cfg)
        labels = [int(r["label"]) for r in records]
        correct = [p == l for p, l in zip(predicted, labels)]
        metrics[name] = {"accuracy": 100.0 * sum(correct) / len(records), "n": len(records),
                         "seconds": round(time.perf_counter() - start, 2)}
        predictions[name] = [{"prediction": p, "label": l, "correct": c} for p, l, c in zip(predicted, labels, correct)]
        if progress:
            print(f"[harness] {name}: accuracy {metrics[name]['accuracy']:.2f} on {len(records)}", flush=True)
    return metrics, predictions
