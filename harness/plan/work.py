"""What a cell computes, from its real data: the training records and their token lengths, the test prompts and
what the protocol generates for them.

Token lengths are those of the cell's own training examples (the benchmark's encoder: its prompt, cutoff and
EOS) under the model's tokenizer. Where this machine lacks the cell's data (a paper profile's hub dataset,
offline) the lengths come from the task's local data (the same benchmark's files under `data_dir`) and the
record counts from the task's published `sizes`; where it lacks the model's tokenizer, from the tokenizer the
harness ships offline (SmolLM2's). Every such substitution is named in `notes`.
"""

from __future__ import annotations

import contextlib
import io
import random
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from harness import models
from harness.errors import HarnessError
from harness.recipe import Recipe

# Lengths of at most this many records (a seeded sample of more): the longest micro-batch, which sets the peak,
# needs the longest examples, so every record of data this size is tokenised (Commonsense170K: about a minute)
LENGTH_SAMPLE = 200_000
OFFLINE_MODEL = "smollm2-135m"  # whose tokenizer counts tokens where the cell's is absent (an offline package)


@dataclass
class DataShape:
    train_records: int                 # the records one epoch trains on (held-out records excluded)
    lengths: list[int]                 # token lengths of (a sample of) the training examples, longest first
    test_prompts: dict[str, int]       # test set -> prompts scored
    notes: list[str] = field(default_factory=list)
    own_collator: bool = False         # the benchmark batches its own examples (padded; GLUE, images)

    @property
    def mean_tokens(self) -> float:
        return sum(self.lengths) / len(self.lengths) if self.lengths else 0.0


@dataclass
class Work:
    train_tokens: float                # useful tokens over the whole run (every epoch)
    optimizer_steps: int
    prompts: int                       # test prompts, every set
    prompt_tokens: float               # their tokens (prefill)
    generated_tokens: float            # at most: every beam of every prompt to the protocol's max_new_tokens
    generation_steps: int              # decoding steps of the batched generation (each batch to its longest)
    batch_rows: int                    # rows per decoding step (batch x beams)


def _tokenizer(model_cfg: dict, notes: list[str]):
    try:
        return models.load_tokenizer(model_cfg)
    except HarnessError:
        notes.append(f"tokens counted with SmolLM2's tokenizer ({model_cfg.get('name')}'s is not on this machine)")
        from harness.config import compose

        return models.load_tokenizer(OmegaConf.to_container(compose([f"model={OFFLINE_MODEL}"]).model, resolve=True))


def data_shape(cfg) -> DataShape:
    """The cell's training records and lengths and its test prompts (see the module's docstring). What the data
    modules print as a run reads (the sets left out) is not printed: the notes say what the plan substituted."""
    with contextlib.redirect_stdout(io.StringIO()):
        return _data_shape(cfg)


def _data_shape(cfg) -> DataShape:
    recipe, notes = Recipe(cfg), []
    task = OmegaConf.to_container(cfg.task, resolve=True)
    sizes = task.get("sizes") or {}
    try:
        records, _ = recipe.benchmark.training_records(task, int(cfg.seed))
        count = len(records)
    except HarnessError:
        if not sizes.get("train_records"):
            raise
        local = {**task, "train_file": None, "train_subset": None}
        records, _ = recipe.benchmark.training_records(local, int(cfg.seed))
        count = int(sizes["train_records"]) - int(task.get("val_set_size") or 0)
        if task.get("train_subset"):
            count = min(count, int(task["train_subset"]))
        notes.append(f"training data {task.get('train_file')} not on this machine: {count:,} records as published "
                     f"(task.sizes), token lengths of {len(records):,} local records")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    processor = (models.load_image_processor(model_cfg) if (recipe.head or {}).get("kind") in models.IMAGE_HEADS
                 else _tokenizer(model_cfg, notes))
    sample = random.Random(0).sample(records, min(LENGTH_SAMPLE, len(records)))
    examples, _ = recipe.benchmark.training_examples(task, processor, sample, [])
    lengths = sorted((len(e["input_ids"]) for e in examples if "input_ids" in e), reverse=True)
    if not lengths:  # images: a token per patch and the class token (ViT), every image alike
        lengths = [image_tokens(OmegaConf.to_container(cfg.model, resolve=True))] * len(examples)
    return DataShape(count, lengths, _test_prompts(recipe, task, sizes, notes), notes,
                     own_collator=recipe.head is not None)


def image_tokens(model_cfg: dict) -> int:
    """A ViT's sequence per image: (image_size / patch_size)^2 patches and the class token (ViT-B/16 at 224: 197)."""
    shapes = {**(model_cfg.get("shapes") or {}), **(model_cfg.get("config") or {})}
    return (int(shapes.get("image_size", 224)) // int(shapes.get("patch_size", 16))) ** 2 + 1


def _test_prompts(recipe: Recipe, task: dict, sizes: dict, notes: list[str]) -> dict[str, int]:
    published = dict(sizes.get("test_records") or {})
    try:
        found = {name: len(rows) for name, rows in recipe.benchmark.test_sets({**task, "missing_ok": True}).items()}
    except HarnessError:
        found = {}
    prompts = {}
    for name in task.get("datasets") or found:
        if name in found:
            prompts[name] = found[name]
        elif name in published:
            subset = task.get("test_subset")
            prompts[name] = min(int(published[name]), int(subset)) if subset else int(published[name])
            notes.append(f"{name}: {prompts[name]:,} test prompts as published (not here)")
    return prompts


def work(cfg, shape: DataShape) -> Work:
    """The cell's training tokens and steps (records x mean tokens x epochs, or the recipe's max_steps) and its
    evaluation work (prompts x beams x new tokens at most, in the protocol's batches)."""
    training, protocol = cfg.training, cfg.protocol
    steps_per_epoch = -(-shape.train_records // int(training.batch_size))
    if training.get("max_steps"):
        steps = int(training.max_steps)
        tokens = steps * int(training.batch_size) * shape.mean_tokens
    else:
        steps = steps_per_epoch * int(training.epochs)
        tokens = shape.train_records * shape.mean_tokens * float(training.epochs)
    beams = int(protocol.get("num_beams") or 1)
    batch = int(protocol.get("batch_size") or 1)
    per_set = dict(protocol.get("max_new_tokens_per_set") or {})
    generated = prompt_tokens = 0.0
    generation_steps = 0
    for name, n in shape.test_prompts.items():
        new = int(per_set.get(name, protocol.get("max_new_tokens") or 0))
        generated += n * beams * new
        generation_steps += -(-n // batch) * new
        prompt_tokens += n * shape.mean_tokens  # (a prompt is about a training example's length, less its answer)
    return Work(tokens, steps, sum(shape.test_prompts.values()), prompt_tokens, generated, generation_steps,
                batch * beams)
