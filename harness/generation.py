"""Batched beam-search generation that gives the same answers as batch size 1.

The original LLM-Adapters evaluation broke when batched (right padding, no attention mask). Here prompts are
left-padded with an attention mask, so the generated continuations start at the same position for every row,
and prompts are grouped by length so little padding is computed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], num_beams: int, max_new_tokens: int, batch_size: int,
             progress: bool = False, desc: str = "generate", stop_strings: Sequence[str] = ()) -> list[str]:
    """Decoded prompt + continuation for every prompt, in input order. A row also stops at the first of
    `stop_strings` it generates (the string itself is kept; callers cut at it)."""
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
            generated = model.generate(**batch, generation_config=config, tokenizer=tokenizer if stop_strings else None)
            for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i] = text
    finally:
        tokenizer.padding_side = old_side
    return outputs
