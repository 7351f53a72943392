"""How a micro-batch of language-modelling examples becomes tensors: padded rows, or one packed row.

`padded` (transformers' DataCollatorForSeq2Seq): one row per example, padded to the longest (to a multiple of 8),
with an attention mask; the padding is computed and thrown away (39% of a micro-batch of 16 on the commonsense
splits). `packed` (DataCollatorWithFlattening): the micro-batch's examples concatenated into one row with
position ids that restart at each example, no attention mask and no padding. transformers builds a
block-diagonal causal mask from the position ids (masking_utils.find_packed_sequence_indices, for the sdpa,
eager and flex attention; only without a KV cache, so the training loop sets `use_cache=False`), so each
example attends only to itself; the first label of each example is -100, so
no example predicts the next one's first token. The loss is then the mean over the same supervised tokens as
the padded batch's, and it and its gradients equal the padded batch's to float tolerance (tests/test_batching.py):
the recipe is unchanged, micro-batches hold the same examples, only the padding goes.

Batches a benchmark collates itself (classification labels, images) are not affected.
"""

from __future__ import annotations

from typing import Mapping

import torch

from harness.errors import ConfigError

BATCHINGS = ("packed", "padded")


def choice_of(training: Mapping, key: str, choices: tuple[str, ...], default: str) -> str:
    """`training.<key>`, one of `choices` (`default` when absent); a one-line error naming the key otherwise."""
    value = training.get(key, default)
    if value not in choices:
        raise ConfigError(f"training.{key}={value!r}: use one of {list(choices)}")
    return value


def batching_of(training: Mapping) -> str:
    return choice_of(training, "batching", BATCHINGS, "padded")


def language_model_collator(tokenizer, batching: str):
    """The collator of language-modelling examples ({"input_ids", "labels"}, optionally "attention_mask")."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "packed":
        return PackedCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
    return DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)


class PackedCollator:
    """DataCollatorWithFlattening, less the per-example attention masks the encoders write (the packed row has
    none: the position ids carry the boundaries)."""

    def __init__(self, flatten):
        self.flatten = flatten

    def __call__(self, examples: list[dict]) -> dict:
        return self.flatten([{k: v for k, v in e.items() if k != "attention_mask"} for e in examples])


def is_packed(batch: Mapping) -> bool:
    return "position_ids" in batch and "attention_mask" not in batch


def token_counts(batch: Mapping) -> tuple[int, int]:
    """(real tokens, computed positions) of a text micro-batch; (0, 0) for other batches (images)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    if is_packed(batch):
        return batch["input_ids"].numel(), batch["input_ids"].numel()
    return 0, 0


def example_segments(batch: Mapping) -> list[tuple[int, slice]]:
    """(row, positions) of each example in a micro-batch: a whole row each when padded (padding has no
    gradient), a run of restarting position ids when packed."""
    if not is_packed(batch):
        return [(row, slice(None)) for row in range(batch["labels"].shape[0])]
    segments = []
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [t for t, p in enumerate(positions) if t == 0 or p != positions[t - 1] + 1]
        segments += [(row, slice(s, e)) for s, e in zip(starts, starts[1:] + [len(positions)])]
    return segments


def supervised_token_counts(batch: Mapping, segments: list[tuple[int, slice]]) -> torch.Tensor:
    """The number of tokens each example's loss is taken over: the labels its own positions predict (a
    language model shifts them by one, so an example's first label is never a target), or 1 per example for a
    classifier."""
    labels = batch["labels"]
    if labels.dim() < 2:
        return torch.ones(len(segments))
    return torch.tensor([float((labels[row, positions][1:] != -100).sum()) for row, positions in segments])


LOSS_WEIGHTINGS = ("token", "example")


def loss_weighting_of(training: Mapping) -> str:
    return choice_of(training, "loss_weighting", LOSS_WEIGHTINGS, "token")


def example_mean_loss(model, batch: Mapping) -> torch.Tensor:
    """The micro-batch's loss with every example weighing the same: each example's mean over its own supervised
    tokens, averaged over the examples (`training.loss_weighting=example`). That is the weighting of a recipe
    whose micro-batch is one example (RoSA's composer runs, LoRA-GA's Trainer on transformers 4.40: each of the
    batch's examples weighs 1 / batch), at any micro-batch; the model's own loss is the mean over the micro-batch's
    tokens, where long answers weigh more. A classifier's batch (one label per example) is already so weighted.
    transformers' losses reduce over the whole micro-batch, hence the per-token losses here."""
    labels = batch["labels"]
    if labels.dim() < 2:
        return model(**batch).loss
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    # position t predicts label t + 1 (a packed row's first label of every example is -100: no cross-example target)
    token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:],
                                                   ignore_index=-100, reduction="none")
    supervised = labels[:, 1:] != -100
    means = []
    for row, positions in example_segments(batch):
        start, stop = positions.start or 0, positions.stop or labels.shape[1]
        kept = supervised[row, start:stop - 1]
        if kept.any():
            means.append(token_loss[row, start:stop - 1][kept].mean())
    if not means:  # (no supervised token: the model's own NaN, which the loop's divergence check reports)
        return token_loss.sum() / supervised.sum()
    return torch.stack(means).mean()


@torch.no_grad()
def packing_error(model, batch: Mapping, tokens: int = 16) -> float | None:
    """How far a packed example's logits are from the same example run alone: max |difference| / max |logit|,
    on the first two examples of a packed micro-batch (at most `tokens` each; None with fewer than two). Near
    rounding when the model's attention keeps packed examples apart; of order one when the second example also
    attends to the first (an attention implementation that ignores the position ids' boundaries)."""
    segments = example_segments(batch)
    if len(segments) < 2:
        return None
    (row_a, first), (row_b, second) = segments[:2]
    ids_a = batch["input_ids"][row_a, first][:tokens]
    ids_b = batch["input_ids"][row_b, second][:tokens]
    positions = lambda n: torch.arange(n, device=ids_a.device)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=torch.cat([ids_a, ids_b])[None], use_cache=False,
                       position_ids=torch.cat([positions(len(ids_a)), positions(len(ids_b))])[None]).logits[0, len(ids_a):]
        alone = model(input_ids=ids_b[None], position_ids=positions(len(ids_b))[None], use_cache=False).logits[0]
    finally:
        model.train(was_training)
    return float((packed.float() - alone.float()).abs().max() / alone.float().abs().max().clamp(min=1e-6))


def check_packing(model, batch: Mapping, compute: str) -> float | None:
    """Raises when the model does not keep packed examples apart (see `packing_error`); the error otherwise."""
    error = packing_error(model, batch)
    limit = 1e-3 if compute in ("no", "fp32") else 5e-2  # rounding of fp32, or of bf16 / fp16 autocast
    if error is not None and error > limit:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(f"training.batching=packed: this {name} model's attention does not keep packed examples "
                          f"apart (logits differ by {error:.2g} of their scale)",
                          "set training.batching=padded, or load the model with attn_implementation sdpa or eager")
    return error
