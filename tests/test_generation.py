"""Batched beam search gives the same answers as batch size 1 (left padding, attention mask)."""

import torch

from harness.benchmarks.commonsense.prompts import eval_prompt
from harness.generation import generate


def test_batched_generation_matches_batch_size_one(tiny_model, tokenizer, data_dir):
    import json

    records = json.loads((data_dir / "commonsense" / "ARC-Easy" / "test.json").read_text())[:3]
    prompts = [eval_prompt(r["instruction"]) for r in records] + [eval_prompt("Is it true?"), eval_prompt("Pick answer1 or answer2, quickly.")]
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # padding really happens
    one = generate(tiny_model, tokenizer, prompts, num_beams=4, max_new_tokens=8, batch_size=1)
    batched = generate(tiny_model, tokenizer, prompts, num_beams=4, max_new_tokens=8, batch_size=5)
    assert batched == one
    assert all(text.startswith(p.strip()[:40]) for text, p in zip(one, prompts))
    assert tokenizer.padding_side == "right"  # restored


def test_generation_is_deterministic(tiny_model, tokenizer):
    prompts = [eval_prompt("Say something.")]
    torch.manual_seed(1)
    a = generate(tiny_model, tokenizer, prompts, num_beams=2, max_new_tokens=6, batch_size=1)
    torch.manual_seed(2)
    b = generate(tiny_model, tokenizer, prompts, num_beams=2, max_new_tokens=6, batch_size=1)
    assert a == b


def test_prompts_computed_once_give_the_original_loops_answers(tiny_model, tokenizer, data_dir):
    """The prompt cache (each prompt computed once, not once per beam) changes nothing: the same text as the
    LLM-Adapters loop (one unpadded prompt at a time, transformers' own beam search) on real prompts."""
    import json

    from transformers import GenerationConfig

    records = json.loads((data_dir / "commonsense" / "boolq" / "test.json").read_text())[:4]
    prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
    config = GenerationConfig(num_beams=4, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        original = [tokenizer.decode(tiny_model.generate(**tokenizer(p, return_tensors="pt"), generation_config=config)[0],
                                     skip_special_tokens=True) for p in prompts]
    assert generate(tiny_model, tokenizer, prompts, num_beams=4, max_new_tokens=8, batch_size=4) == original
    assert generate(tiny_model, tokenizer, prompts, num_beams=4, max_new_tokens=8, batch_size=4, prefill_once=False) == original
