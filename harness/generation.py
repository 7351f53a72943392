"""Batched beam-search generation that gives the same answers as batch size 1.

The original LLM-Adapters evaluation broke when batched (right padding, no attention mask). Here prompts are
left-padded with an attention mask, so the generated continuations start at the same position for every row,
prompts are grouped by length so little padding is computed, and with beams each prompt is computed once.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.served import ServedModel


def prompt_cache(model, batch, num_beams: int):
    """The KV cache of every prompt but its last token, computed once per prompt and repeated for its beams.

    transformers' beam search repeats each prompt num_beams times before its first forward, so the prompts,
    most of a commonsense evaluation's tokens, are computed num_beams times over; given this cache, generate
    computes only the last prompt token per beam. Positions as generate numbers left-padded rows."""
    from transformers import DynamicCache

    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
          use_cache=True)
    cache.batch_repeat_interleave(num_beams)  # row i's beams follow each other, as generate expands the inputs
    return cache


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], num_beams: int, max_new_tokens: int, batch_size: int,
             progress: bool = False, desc: str = "generate", stop_strings: Sequence[str] = (),
             prefill_once: bool = True) -> list[str]:
    """Decoded prompt + continuation for every prompt, in input order. A row also stops at the first of
    `stop_strings` it generates (the string itself is kept; callers cut at it). `prefill_once`: with beams, the
    prompts are computed once, not once per beam (`prompt_cache`). A served model (`protocol.engine=vllm`)
    generates in its engine instead."""
    from transformers import GenerationConfig

    if isinstance(model, ServedModel):
        return model.generate(prompts, num_beams, max_new_tokens, stop_strings)

    config = GenerationConfig(
        num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop_strings) or None,
    )
    cache = num_beams if num_beams > 1 and prefill_once else 0
    return [texts[0] for texts in _batched(model, tokenizer, prompts, config, batch_size, progress, desc, cache)]


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], num_samples: int, temperature: float, top_p: float,
           max_new_tokens: int, batch_size: int, seed: int, progress: bool = False, desc: str = "sample",
           stop_strings: Sequence[str] = ()) -> list[list[str]]:
    """`num_samples` decoded continuations (without the prompt) for every prompt, in input order: nucleus sampling at
    `temperature` / `top_p` (temperature 0: one greedy continuation, repeated). `batch_size` counts prompts; the
    sampling is seeded once (`seed`), so the samples depend on the order and batching of the prompts, as any
    sampled evaluation does; pass@k over several samples is what averages that out. A served model
    (`protocol.engine=vllm`) samples in its engine instead."""
    from transformers import GenerationConfig

    if isinstance(model, ServedModel):
        return model.sample(prompts, num_samples, temperature, top_p, max_new_tokens, seed, stop_strings)

    greedy = float(temperature) == 0.0
    config = GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else float(temperature),
        top_p=None if greedy else float(top_p),
        num_return_sequences=1 if greedy else int(num_samples), max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop_strings) or None,
    )
    device = next(model.parameters()).device
    # seeded without moving the process's own random streams (training, a later run's draws)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        texts = _batched(model, tokenizer, prompts, config, batch_size, progress, desc, 0, new_only=True)
    return [t * int(num_samples) if greedy else t for t in texts]


def _batched(model, tokenizer, prompts: Sequence[str], config, batch_size: int, progress: bool, desc: str,
             cache_beams: int, new_only: bool = False) -> list[list[str]]:
    """The decoded outputs of `config` for every prompt (a list of its num_return_sequences), in input order;
    prompts grouped by length, left-padded. `cache_beams` > 1: the prompts' cache computed once for the beams.
    `new_only`: the generated tokens alone are decoded (left padding puts every row's first one at one position)."""
    device = next(model.parameters()).device
    per_prompt = int(config.num_return_sequences or 1)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[list[str]] = [[] for _ in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            if cache_beams > 1 and batch["input_ids"].shape[1] > 1:
                batch["cache"] = prompt_cache(model, batch, cache_beams)
            generated = model.generate(**batch, generation_config=config,
                                       tokenizer=tokenizer if config.stop_strings else None)
            if new_only:
                generated = generated[:, batch["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
            for row, i in enumerate(idx):  # generate returns a prompt's sequences one after another
                outputs[i] = decoded[row * per_prompt:(row + 1) * per_prompt]
    finally:
        tokenizer.padding_side = old_side
    return outputs
