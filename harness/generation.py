"""Batched beam-search generation that gives the same answers as batch size 1.

The original LLM-Adapters evaluation broke when batched (right padding, no attention mask). Here prompts are
left-padded with an attention mask, so the generated continuations start at the same position for every row,
prompts are grouped by length so little padding is computed, and with beams each prompt is computed once.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm


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
    prompts are computed once, not once per beam (`prompt_cache`)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop_strings) or None,
    )
    device = next(model.parameters()).device
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            if num_beams > 1 and prefill_once and batch["input_ids"].shape[1] > 1:
                batch["cache"] = prompt_cache(model, batch, num_beams)
            generated = model.generate(**batch, generation_config=config, tokenizer=tokenizer if stop_strings else None)
            for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text
    finally:
        tokenizer.padding_side = old_side
    return outputs
