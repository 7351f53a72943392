"""Image classification scoring (SPEC 2.5): top-1 accuracy of the head's argmax on the test split, each image
preprocessed as for training minus the augmentation (the model's own resize and normalisation)."""

from __future__ import annotations

from typing import Mapping

import torch
from tqdm.auto import tqdm

from harness.benchmarks.base import Scorer, accuracy_summary
from harness.benchmarks.image.data import collator


@torch.no_grad()
def predict(model, processor, records: list[dict], batch_size: int, progress: bool, desc: str,
            task_cfg: Mapping | None = None) -> list[int]:
    collate = collator(processor, task_cfg, train=False)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[int] = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collate([{"image": r["image"], "labels": r["label"]} for r in records[start:start + batch_size]])
        logits = model(pixel_values=batch["pixel_values"].to(device, dtype)).logits
        out.extend(logits.argmax(-1).tolist())
    return out


class ImageAccuracy(Scorer):
    name = "image_accuracy"

    def score_set(self, model, processor, name, records, protocol, task, progress=False):
        predicted = predict(model, processor, records, int(protocol["batch_size"]), progress, f"eval {name}", task)
        rows = [{"prediction": p, "label": int(r["label"]), "correct": p == int(r["label"])}
                for p, r in zip(predicted, records)]
        return accuracy_summary(rows), rows
