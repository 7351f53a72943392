"""Packed language-modelling micro-batches: the same loss, gradients, training and RoSA scores as padded ones,
with no padding; a model whose attention would let packed examples see each other is refused."""

import copy

import pytest
import torch

from harness import methods
from harness.batching import check_packing, example_segments, language_model_collator, packing_error, token_counts
from harness.benchmarks.commonsense import data as commonsense
from harness.benchmarks.math import data as math_data
from harness.config import compose
from harness.errors import ConfigError
from harness.methods import rosa
from harness.train import RunContext, TrainingData, make_loader, train
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

TARGETS = ["q_proj", "v_proj", "up_proj"]


@pytest.fixture
def examples(tokenizer, data_dir):
    """Real commonsense and math training examples of unequal lengths (prompt masked: loss on the answer)."""
    task = compose(["task.train_subset=6", "task.val_set_size=0"]).task
    records, _ = commonsense.training_records(task, seed=0)
    out = [commonsense.tokenize(r, tokenizer, 256, train_on_inputs=False) for r in records]
    math_task = compose(["task=gsm8k", "protocol=math_greedy", "task.train_subset=2", "task.val_set_size=0"]).task
    math_records, _ = math_data.training_records(math_task, seed=0)
    out += [math_data.tokenize(r, tokenizer, 256, train_on_inputs=False) for r in math_records]
    assert len({len(e["input_ids"]) for e in out}) > 4
    return out


def loss_and_grads(model, batch):
    model.config.use_cache = False  # as the training loop runs (a KV cache turns transformers' packed masks off)
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_packed_micro_batch_has_the_padded_ones_loss_and_gradients(tiny_model, tokenizer, examples):
    adapted = methods.apply(tiny_model, "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    model = adapted.model
    padded = language_model_collator(tokenizer, "padded")(examples)
    packed = language_model_collator(tokenizer, "packed")(examples)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples)) and "attention_mask" not in packed
    useful, computed = token_counts(padded)
    assert token_counts(packed) == (useful, useful) and computed > useful  # the same real tokens, no padding
    assert len(example_segments(packed)) == len(examples)
    loss_padded, grads_padded = loss_and_grads(model, padded)
    loss_packed, grads_packed = loss_and_grads(model, packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # and it is not the loss of one long example: without the boundaries the loss differs
    joined = {k: v for k, v in packed.items() if k != "position_ids"}

    assert abs(model(**joined).loss.item() - loss_padded) > 1e-3


def test_training_packed_follows_the_padded_loss_curve(tiny_model, tokenizer, examples):
    cfg = compose(["training.batch_size=4", "training.micro_batch_size=2", "training.max_steps=4",
                   "training.warmup_steps=1", "training.lr=5e-3"])
    assert cfg.training.batching == "packed"  # the default
    curves, stats = {}, {}
    for batching in ("padded", "packed"):
        torch.manual_seed(0)
        adapted = methods.apply(copy.deepcopy(tiny_model), "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
        model = adapted.model
        training = compose(["training.batch_size=4", "training.micro_batch_size=2", "training.max_steps=4",
                            "training.warmup_steps=1", "training.lr=5e-3", f"training.batching={batching}"]).training
        out = train(adapted, TrainingData(examples, [], tokenizer), training,
                    RunContext(seed=0, progress=False))
        curves[batching], stats[batching] = out["stats"]["loss_curve"], out["stats"]
    assert curves["packed"] == pytest.approx(curves["padded"], rel=1e-4)
    assert stats["packed"]["batching"] == "packed" and stats["packed"]["throughput"]["padding_share"] == 0.0
    assert stats["padded"]["throughput"]["padding_share"] > 0.05


def test_rosa_fisher_scores_are_the_same_packed(tiny_model, tokenizer, examples):
    """The per-example Fisher splits a packed row into its examples: the same score as padded rows."""
    tiny_model.config.use_cache = False  # as the training loop sets it before the mask generation
    adapted = methods.apply(tiny_model, "rosa", **preset("rosa", dropout=0.0, r=2, density=0.05,
                                                         target_modules=TARGETS))
    model = adapted.model
    targets = rosa.state(adapted).targets
    padded = list(make_loader(examples, tokenizer, 4, shuffle=False, seed=0, batching="padded"))
    packed = list(make_loader(examples, tokenizer, 4, shuffle=False, seed=0, batching="packed"))
    for score in ("fisher", "mean"):
        expected = rosa.accumulate_gradient_scores(model, [padded], targets, score)
        got = rosa.accumulate_gradient_scores(model, [packed], targets, score)
        for name in targets:
            # (the signed mean cancels to near zero in places: a tolerance on the scale of the score)
            scale = float(expected[name].abs().max())
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale, msg=f"{score} {name}")


def test_a_model_that_lets_packed_examples_attend_to_each_other_is_refused(tiny_model, tokenizer, examples):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch = language_model_collator(tokenizer, "packed")(examples[:2])
    assert packing_error(tiny_model, batch) < 1e-5
    assert check_packing(tiny_model, batch, "no") < 1e-3

    def causal_over_the_row(module, query, key, value, attention_mask, **kwargs):
        # attention that ignores the packed boundaries: causal over the whole row
        return sdpa_attention_forward(module, query, key, value, None, **{**kwargs, "is_causal": True})

    AttentionInterface.register("causal_over_the_row", causal_over_the_row)
    tiny_model.set_attn_implementation("causal_over_the_row")
    assert packing_error(tiny_model, batch) > 1e-2
    with pytest.raises(ConfigError, match="does not keep packed examples apart"):
        check_packing(tiny_model, batch, "no")


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_example_weighting_is_the_mean_of_each_examples_own_loss(tiny_model, tokenizer, examples, batching):
    """training.loss_weighting=example: micro-batch 1's weighting (RoSA's, LoRA-GA's) at any micro-batch: the mean
    of the examples' losses computed one by one, not the model's token mean over the micro-batch."""
    from harness.batching import example_mean_loss

    adapted = methods.apply(tiny_model, "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    model = adapted.model
    model.config.use_cache = False
    collate = language_model_collator(tokenizer, batching)
    with torch.no_grad():
        alone = [model(**language_model_collator(tokenizer, "padded")([e])).loss.item() for e in examples]
        weighted = example_mean_loss(model, collate(examples)).item()
        token_mean = model(**collate(examples)).loss.item()
    assert weighted == pytest.approx(sum(alone) / len(alone), rel=1e-5)
    assert abs(token_mean - weighted) > 1e-4  # (the examples' answers differ in length: the two weightings differ)
    with pytest.raises(ConfigError, match="training.loss_weighting='tokens'"):
        from harness.batching import loss_weighting_of
        loss_weighting_of({"loss_weighting": "tokens"})


def test_training_with_example_weighting_follows_its_loss(tiny_model, tokenizer, examples):
    cfg = compose(["model=tiny-llama", "training.max_steps=2", "training.batch_size=4", "training.micro_batch_size=4",
                   "training.warmup_steps=0", "+training.loss_weighting=example", "training.lr=0"])
    adapted = methods.apply(tiny_model, "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    model = adapted.model
    stats = train(adapted, TrainingData(examples[:4], [], tokenizer), cfg.training,
                  RunContext(seed=0, progress=False))["stats"]
    with torch.no_grad():
        model.eval()
        alone = [model(**language_model_collator(tokenizer, "padded")([e])).loss.item() for e in examples[:4]]
    assert stats["first_loss"] == pytest.approx(sum(alone) / 4, rel=1e-4)  # (lr 0: the weights never move)
