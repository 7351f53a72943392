"""Image classification (Neat Table 4, SPEC 2.5): a vision transformer with a new classification head.

One dataset per run (`task.dataset`, a key of `task.sets`), each with its own head. Where a set's images come
from (`task.sets.<name>.source`):
- `hub`: a hub dataset id (`path`, `config`), its train / test splits and image / label columns. Images stay
  encoded (the file's bytes) in memory and are decoded per batch, so the large-image sets (Cars, Aircraft,
  RESISC45) do not sit decoded in RAM.
- `idx`: the gzipped IDX files of the MNIST family in a directory (Fashion-MNIST from Debian's
  `dataset-fashion-mnist`).
- `sklearn_digits`: scikit-learn's bundled 8x8 digits (one pool of images, so `test_fraction` is required).
A set with `test_fraction` takes its test images from its train split instead of a test split: a fixed split
(`split_seed`, `stratify`), the same for every run. DTD in Neat's `main.py` (SPEC 2.5): 20% of the train split
is the test set, and the validation 10% (`task.val_set_size`) is then held out of the remaining 80%.
Records: {"image": uint8 array (H, W) or (H, W, C), or an encoded image {"bytes", "path"}, "label": int}.
Grey images are repeated to three channels, so one pipeline serves every set and model.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile, Packaged

SOURCES = ("hub", "idx", "sklearn_digits")
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def image_set(task: Mapping) -> Mapping:
    """The spec of `task.dataset` from `task.sets`, checked."""
    name, sets = task.get("dataset"), task.get("sets") or {}
    if name not in sets:
        raise DataError(f"task.dataset={name!r}: not in task.sets (has {sorted(sets)})")
    spec = sets[name]
    if spec.get("source") not in SOURCES:
        raise DataError(f"task.sets.{name}.source={spec.get('source')!r}: use one of {list(SOURCES)}")
    if not isinstance(spec.get("num_labels"), int) or spec["num_labels"] < 2:
        raise DataError(f"task.sets.{name}.num_labels must be an integer >= 2, got {spec.get('num_labels')!r}")
    return spec


# --- readers -------------------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format: magic 0x0000 08 <ndim>, big-endian sizes, uint8 data), gzipped
    or not. numpy reads the payload; no library in the field parses the header offline."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'} ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex() or 'missing'}, expected 000008xx)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but the header's dimensions {dims} need {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(directory: Path, split: str, num_labels: int) -> list[dict]:
    images_file, labels_file = (directory / f for f in IDX_FILES[split])
    if not images_file.is_file():
        raise DataError(f"{images_file}: file not found. Fashion-MNIST comes from Debian's dataset-fashion-mnist "
                        "(`make setup` installs it where apt-get is available; else `apt-get install "
                        "dataset-fashion-mnist`), or point task.sets.<name>.path at a folder with the IDX files")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{directory}: expected images (N, H, W) and labels (N,), found {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    _check_labels(labels.tolist(), num_labels, str(labels_file))
    return [{"image": images[i], "label": int(labels[i])} for i in range(len(images))]


def read_digits() -> list[dict]:
    """scikit-learn's digits (1797 images, 8x8, values 0-16) as uint8 images, one pool (split by `carve`)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [{"image": images[i], "label": int(digits.target[i])} for i in range(len(images))]


def carve(records: list[dict], spec: Mapping, split: str, name: str) -> list[dict]:
    """The `split` ("train" or "test") part of a fixed split of `records` into train and `test_fraction` test,
    by `split_seed`, stratified by label when `stratify` (scikit-learn's train_test_split)."""
    from sklearn.model_selection import train_test_split

    fraction = spec.get("test_fraction")
    if not isinstance(fraction, (int, float)) or not 0 < float(fraction) < 1:
        raise DataError(f"task.sets.{name}.test_fraction={fraction!r}: a fraction strictly between 0 and 1")
    labels = [r["label"] for r in records] if spec.get("stratify", False) else None
    train_idx, test_idx = train_test_split(np.arange(len(records)), test_size=float(fraction),
                                           random_state=int(spec.get("split_seed", 0)), stratify=labels)
    return [records[i] for i in sorted(train_idx if split == "train" else test_idx)]


def read_hub_images(spec: Mapping, split: str, name: str) -> list[dict]:
    """A hub image dataset's split with the images left encoded (decoded per batch)."""
    from datasets import Image, load_dataset

    from harness.offline import ensure_hub_available

    hub_split = spec.get(f"{split}_split", split)
    ensure_hub_available(str(spec["path"]), "dataset", what=f"task.sets.{name}.path")
    dataset = load_dataset(str(spec["path"]), spec.get("config"), split=hub_split)
    image_col, label_col = spec.get("image_column", "image"), spec.get("label_column", "label")
    missing = [c for c in (image_col, label_col) if c not in dataset.column_names]
    if missing:
        raise DataError(f"{spec['path']} ({hub_split}): no column(s) {missing}; it has {dataset.column_names} "
                        f"(set task.sets.{name}.image_column / label_column)")
    if isinstance(dataset.features[image_col], Image):
        dataset = dataset.cast_column(image_col, Image(decode=False))
    records = [{"image": row[image_col], "label": int(row[label_col])} for row in dataset]
    _check_labels([r["label"] for r in records], int(spec["num_labels"]), f"{spec['path']} ({hub_split})")
    return records


def _check_labels(labels: list[int], num_labels: int, where: str) -> None:
    bad = [label for label in labels if not 0 <= label < num_labels]
    if bad:
        raise DataError(f"{where}: label {bad[0]} outside 0..{num_labels - 1} (task.sets.<name>.num_labels={num_labels})")


def data_sources(task: Mapping) -> list:
    """What the chosen set reads (provenance.Source): its IDX files, scikit-learn's bundled digits, or the hub
    dataset's train / test splits."""
    spec, name = image_set(task), task["dataset"]
    if spec["source"] == "idx":
        directory = Path(str(spec["path"]))
        carved = spec.get("test_fraction") is not None
        files = [(f"{'train' if split == 'train' else 'test/' + name}:{f}", directory / f)
                 for split in IDX_FILES for f in IDX_FILES["train" if carved else split]]
        for _, path in files:
            if not path.is_file():
                raise DataError(f"{path}: file not found. Fashion-MNIST comes from Debian's dataset-fashion-mnist "
                                "(`make setup` installs it where apt-get is available; else `apt-get install "
                                "dataset-fashion-mnist`), or point task.sets.<name>.path at a folder with the IDX files")
        return [LocalFile(role, path) for role, path in files]
    if spec["source"] == "sklearn_digits":
        return [Packaged("train", "scikit-learn"), Packaged(f"test/{name}", "scikit-learn")]
    test_split = spec.get("train_split", "train") if spec.get("test_fraction") is not None else spec.get("test_split", "test")
    return [Hub("train", str(spec["path"]), "dataset", spec.get("config"), spec.get("train_split", "train")),
            Hub(f"test/{name}", str(spec["path"]), "dataset", spec.get("config"), test_split)]


def _read(task: Mapping, split: str) -> list[dict]:
    spec = image_set(task)
    name = task["dataset"]
    carved = spec.get("test_fraction") is not None or spec["source"] == "sklearn_digits"
    read_split = "train" if carved else split  # a carved test set comes out of the train split
    if spec["source"] == "idx":
        records = read_idx_split(Path(str(spec["path"])), read_split, int(spec["num_labels"]))
    elif spec["source"] == "sklearn_digits":
        records = read_digits()
    else:
        records = read_hub_images(spec, read_split, name)
    return carve(records, spec, split, name) if carved else records


# --- the task interface --------------------------------------------------------------------------------------

def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    return subset_and_split(_read(task, "train"), task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    """The test split; `task.test_subset` as `task.test_subset_mode` says (this config: a fixed sample, since
    some test splits are ordered by class and their first N would hold only a few classes)."""
    return {task["dataset"]: test_subset(_read(task, "test"), task)}


def model_head(task: Mapping) -> dict:
    return {"kind": "image_classification", "num_labels": int(image_set(task)["num_labels"])}


def encoder(task_cfg: Mapping, processor):
    """Records stay images here; the collator decodes, augments and normalises them per batch."""
    return lambda record: {"image": record["image"], "labels": int(record["label"])}


# --- images to tensors ---------------------------------------------------------------------------------------

def to_rgb(image):
    """A PIL RGB image from a uint8 array (grey or colour), a PIL image, or an encoded {"bytes", "path"}."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Mapping):
        if image.get("bytes") is not None:
            return Image.open(io.BytesIO(image["bytes"])).convert("RGB")
        return Image.open(image["path"]).convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


def random_resized_crop(image, size: tuple[int, int], rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style random crop (area in `scale`, aspect in `ratio`) resized to `size`, the torchvision
    transform's sampling rule; written here because torchvision is not installable beside this CPU torch."""
    import math

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize(size, box=(left, top, left + w, top + h))
    # fallback, as torchvision: the central crop at the nearest allowed aspect
    aspect = width / height
    w, h = (width, int(round(width / ratio[0]))) if aspect < ratio[0] else (
        (int(round(height * ratio[1])), height) if aspect > ratio[1] else (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    return image.resize(size, box=(left, top, left + w, top + h))


def _processor_size(processor) -> tuple[int, int]:
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["width"]), int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise DataError(f"image processor {type(processor).__name__} has size {size!r}: cannot tell the input size")


class ImageCollator:
    """Decodes a batch of images, applies the training augmentation (`task.augment`), and lets the model's
    image processor resize and normalise them: {"pixel_values", "labels"}."""

    def __init__(self, processor, augment: str = "none", train: bool = True, seed: int | None = None):
        if augment not in AUGMENTATIONS:
            raise DataError(f"task.augment={augment!r}: use one of {sorted(AUGMENTATIONS)}")
        self.processor, self.augment, self.train = processor, augment, train
        self.seed = torch.initial_seed() if seed is None else seed  # the run's seed (set before the model loads)
        self.rngs: dict[int, random.Random] = {}
        self.size = _processor_size(processor)

    def _rng(self) -> random.Random:
        # one stream per data-loader worker: copies of one generator would augment every worker's batches alike
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if worker not in self.rngs:
            self.rngs[worker] = random.Random(f"{self.seed}-{worker}")
        return self.rngs[worker]

    def __call__(self, examples: list[dict]) -> dict:
        images = [to_rgb(e["image"]) for e in examples]
        if self.train and self.augment != "none":
            rng = self._rng()
            images = [AUGMENTATIONS[self.augment](image, self.size, rng) for image in images]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor([int(e["labels"]) for e in examples])}


def _flip(image, rng: random.Random):
    from PIL import Image

    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


AUGMENTATIONS = {
    "none": lambda image, size, rng: image,
    # the Hugging Face image-classification recipe: random resized crop and horizontal flip
    "crop_flip": lambda image, size, rng: _flip(random_resized_crop(image, size, rng), rng),
}


def collator(processor, task_cfg: Mapping | None = None, train: bool = True):
    task_cfg = task_cfg or {}
    return ImageCollator(processor, str(task_cfg.get("augment", "none")), train=train)
