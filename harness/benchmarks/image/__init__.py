"""Image classification (Neat Table 4, SPEC 2.5): a vision transformer with a new head, one dataset per run,
top-1 accuracy on its test split (`image_accuracy`)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark
from harness.benchmarks.image import data
from harness.benchmarks.image.accuracy import ImageAccuracy


@register
class Image(Benchmark):
    name = "image"
    data = data
    # transformers' vision classifiers, ViT included, name their head so
    head_modules = ("classifier",)
    short_names = {"oxford_pets": "Pets", "stanford_cars": "Cars", "cifar10": "CIFAR10", "dtd": "DTD",
                   "eurosat": "EuroSAT", "fgvc_aircraft": "FGVC", "resisc45": "RESISC45", "cifar100": "CIFAR100",
                   "fashion_mnist": "F-MNIST", "digits": "Digits"}
    scorers = {"image_accuracy": ImageAccuracy()}

    def encoder(self, task, processor):
        return data.encoder(task, processor)

    def collator(self, processor, task, train=True):
        return data.collator(processor, task, train=train)

    def model_head(self, task):
        return data.model_head(task)

    def semantic_task(self, task):
        # a run reads one set: the other entries of `sets` do not determine its result
        sets = task.get("sets") or {}
        return {**task, "sets": {k: v for k, v in sets.items() if k == task.get("dataset")}}
