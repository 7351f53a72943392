"""Training throughput of the harness beside a plain HF `Trainer` + peft baseline, in one invocation.

All train the same LoRA on the same model, the same commonsense examples in micro-batches of the same size, for
the same number of optimizer steps: the harness with packed micro-batches (its default) and with padded ones
(the Trainer's collator), and the Trainer. Each reports useful (non-padding) tokens per second of its training
loop (from its first step to its last, the first included in all), and the script prints the ratios.

    .venv/bin/python experiments/throughput.py                          # SmolLM2-135M, CPU here
    .venv/bin/python experiments/throughput.py model=llama2-7b-random --steps 10 --micro-batch 4   # on a GPU
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time


def examples_and_model(overrides: list[str], n_examples: int):
    import torch

    from harness.config import compose
    from harness.recipe import Recipe

    recipe = Recipe(compose(["profile=mini", "method=lora", f"task.train_subset={n_examples}", "task.val_set_size=0",
                             *overrides]))
    cfg, placement = recipe.cfg, recipe.placement
    records = recipe.data().train

    def fresh():
        torch.manual_seed(0)
        model, tokenizer = recipe.load(seeded=False)
        return recipe.adapt(model), tokenizer

    _, tokenizer = fresh()
    encode = recipe.benchmark.encoder(cfg.task, tokenizer)
    examples = [e for e in (encode(r) for r in records) if any(label != -100 for label in e["labels"])]
    return cfg, placement, fresh, examples


def harness_tokens_per_s(cfg, placement, fresh, examples, micro: int, steps: int, batching: str) -> float:
    from harness.train import RunContext, TrainingData, train

    training = {**cfg.training, "batch_size": micro, "micro_batch_size": micro, "max_steps": steps,
                "warmup_steps": 0, "batching": batching}
    adapted, tokenizer = fresh()
    out = train(adapted, TrainingData(examples, [], tokenizer), training,
                RunContext(seed=0, progress=False, placement=placement))
    return out["stats"]["throughput"]["useful_tokens_per_s"]


def trainer_tokens_per_s(cfg, placement, fresh, examples, micro: int, steps: int) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    adapted, tokenizer = fresh()
    model = adapted.model
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    timing = {}

    class Clock(TrainerCallback):  # the training loop's time, as the harness measures its own
        def on_train_begin(self, args, state, control, **kwargs):
            timing["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            timing["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro, max_steps=steps,
                                 learning_rate=float(cfg.training.lr), lr_scheduler_type="linear", warmup_steps=0,
                                 logging_steps=10**9, save_strategy="no", report_to=[], seed=0,
                                 dataloader_num_workers=0, bf16=placement.compute == "bf16",
                                 use_cpu=placement.device == "cpu", max_grad_norm=1.0)
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[Clock()])
        trainer.train()
    # one epoch of exactly `steps` micro-batches: every example once, whatever the sampler's order
    useful = sum(len(e["input_ids"]) for e in examples)
    return useful / (timing["end"] - timing["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-llama method.r=16")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (one epoch of the examples)")
    parser.add_argument("--micro-batch", type=int, default=4)
    args = parser.parse_intermixed_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))
    needed = args.micro_batch * args.steps
    cfg, placement, fresh, examples = examples_and_model(args.overrides, needed)
    examples = (examples * math.ceil(needed / len(examples)))[:needed]
    packed = harness_tokens_per_s(cfg, placement, fresh, examples, args.micro_batch, args.steps, "packed")
    padded = harness_tokens_per_s(cfg, placement, fresh, examples, args.micro_batch, args.steps, "padded")
    theirs = trainer_tokens_per_s(cfg, placement, fresh, examples, args.micro_batch, args.steps)
    print(f"model {cfg.model.name} on {placement.device} ({placement.compute}), LoRA r={cfg.method.r}, micro-batch "
          f"{args.micro_batch}, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"harness, packed  {packed:10.1f} useful tokens/s")
    print(f"harness, padded  {padded:10.1f} useful tokens/s")
    print(f"HF Trainer+peft  {theirs:10.1f} useful tokens/s (padded)")
    print(f"ratio packed / padded (harness): {packed / padded:.2f}")
    print(f"ratio harness (packed) / Trainer: {packed / theirs:.2f}; harness (padded) / Trainer: {padded / theirs:.2f}")


if __name__ == "__main__":
    main()
