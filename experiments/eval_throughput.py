"""Commonsense evaluation (`paper_gen`: 4-beam search, 32 new tokens) of the harness beside the LLM-Adapters
batch-1 loop, in one invocation: seconds, the speed ratio, and how many predictions agree.

"batched" is the harness's generation with the prompts computed once per beam (transformers' beam search), and
"harness" with each prompt computed once (`generation.prompt_cache`). The batch-1 loop is the original evaluate.py's: one unpadded prompt at a time through `model.generate` with the
same GenerationConfig. Both run on the same model and records; the agreement count compares the extracted
answers (and the whole responses) record by record, and lists the disagreements.

    .venv/bin/python experiments/eval_throughput.py                       # SmolLM2-135M on this CPU, fp32
    .venv/bin/python experiments/eval_throughput.py --per-set 48 --batch-size 32
    .venv/bin/python experiments/eval_throughput.py model=llama2-7b ...   # on a GPU (bf16): the agreement rate
    .venv/bin/python experiments/eval_throughput.py --math 8 --math-tokens 64   # greedy GSM8K: new tokens/s too

`--math N`: also MetaMath's greedy GSM8K protocol on the first N test problems (`math_greedy`'s prompt, no stop
strings, at most `--math-tokens` new tokens), the batch-1 loop against the harness's batched generation: new
tokens per second of each. `--json PATH` writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def batch_one_loop(model, tokenizer, prompts, num_beams: int, max_new_tokens: int) -> list[str]:
    """LLM-Adapters evaluate.py: batch size 1, no padding."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for prompt in prompts:
            batch = tokenizer(prompt, return_tensors="pt").to(device)
            out.append(tokenizer.decode(model.generate(**batch, generation_config=config)[0], skip_special_tokens=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-llama")
    parser.add_argument("--sets", default="boolq,ARC-Easy")
    parser.add_argument("--per-set", type=int, default=24, help="records of each set")
    parser.add_argument("--batch-size", type=int, help="the harness's batch (default: protocol.batch_size)")
    parser.add_argument("--math", type=int, default=0, help="also greedy GSM8K on this many test problems")
    parser.add_argument("--math-tokens", type=int, default=128, help="new tokens of the greedy GSM8K runs")
    parser.add_argument("--json", help="also write the numbers to this file (JSON)")
    args = parser.parse_intermixed_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from harness.benchmarks.commonsense.paper_gen import score
    from harness.benchmarks.commonsense.prompts import eval_prompt
    from harness.config import compose
    from harness.generation import generate
    from harness.recipe import Recipe

    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))
    sets = args.sets.split(",")
    cfg = compose(["profile=mini", "task=commonsense", "protocol=paper_gen", f"task.datasets=[{','.join(sets)}]",
                   f"task.test_subset={args.per_set}", *args.overrides])
    recipe = Recipe(cfg)
    placement = recipe.placement
    torch.manual_seed(0)
    model, tokenizer = recipe.load(seeded=False)
    model.eval()
    test_sets = recipe.test_sets()
    beams, new_tokens = int(cfg.protocol.num_beams), int(cfg.protocol.max_new_tokens)
    batch_size = args.batch_size or int(cfg.protocol.batch_size)

    timings = {"batch-1 loop": 0.0, "batched": 0.0, "harness": 0.0}
    agree = responses_agree = total = 0
    disagreements = []
    autocast = torch.autocast(placement.device, dtype=torch.bfloat16, enabled=placement.compute == "bf16")
    for name, records in test_sets.items():
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        with autocast:
            start = time.perf_counter()
            reference = batch_one_loop(model, tokenizer, prompts, beams, new_tokens)
            timings["batch-1 loop"] += time.perf_counter() - start
            start = time.perf_counter()  # batched, the prompts still computed once per beam
            generate(model, tokenizer, prompts, num_beams=beams, max_new_tokens=new_tokens, batch_size=batch_size,
                     prefill_once=False)
            timings["batched"] += time.perf_counter() - start
            start = time.perf_counter()
            ours = generate(model, tokenizer, prompts, num_beams=beams, max_new_tokens=new_tokens, batch_size=batch_size)
            timings["harness"] += time.perf_counter() - start
        _, ref_rows = score(name, records, reference)
        _, our_rows = score(name, records, ours)
        for i, (a, b) in enumerate(zip(ref_rows, our_rows)):
            total += 1
            agree += a["prediction"] == b["prediction"]
            responses_agree += a["response"] == b["response"]
            if a["response"] != b["response"]:
                disagreements.append((name, i, a["response"], b["response"]))
    print(f"model {cfg.model.name} on {placement.device} ({placement.compute}), {beams} beams, {new_tokens} new tokens, "
          f"{total} records ({', '.join(f'{n} {len(r)}' for n, r in test_sets.items())}), harness batch {batch_size}, "
          f"{torch.get_num_threads()} threads")
    for what, seconds in timings.items():
        print(f"{what:14s} {seconds:8.1f} s  {total / seconds:6.2f} records/s")
    print(f"ratio harness / batch-1 loop: {timings['batch-1 loop'] / timings['harness']:.2f}x faster "
          f"(batched without the prompt cache: {timings['batch-1 loop'] / timings['batched']:.2f}x)")
    print(f"agreement: answers {agree}/{total}, whole responses {responses_agree}/{total}")
    for name, i, a, b in disagreements[:20]:
        print(f"  {name}[{i}]: batch-1 {a!r} | harness {b!r}")
    report = {"model": cfg.model.name, "device": placement.device, "compute": placement.compute,
              "commonsense": {"records": total, "beams": beams, "new_tokens": new_tokens, "batch_size": batch_size,
                              "seconds": timings, "records_per_s": {k: total / v for k, v in timings.items()},
                              "answers_agree": agree, "responses_agree": responses_agree}}
    if args.math:
        with autocast:
            report["math_greedy"] = math_greedy(model, tokenizer, args.overrides, args.math, args.math_tokens, batch_size)
        m = report["math_greedy"]
        print(f"math greedy ({m['problems']} GSM8K problems, at most {m['max_new_tokens']} new tokens): batch-1 loop "
              f"{m['new_tokens_per_s']['batch-1 loop']:.1f} new tokens/s, harness {m['new_tokens_per_s']['harness']:.1f} "
              f"({m['ratio']:.2f}x); outputs identical {m['identical']}/{m['problems']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def math_greedy(model, tokenizer, overrides, problems: int, max_new_tokens: int, batch_size: int) -> dict:
    """MetaMath's greedy GSM8K set-up: the batch-1 loop and the harness's batches, new tokens per second."""
    from harness.benchmarks.math.data import question_of
    from harness.benchmarks.math.greedy import EVAL_TEMPLATE
    from harness.config import compose
    from harness.generation import generate
    from harness.recipe import Recipe

    cfg = compose(["profile=mini", "task=gsm8k", "protocol=math_greedy", f"task.test_subset={problems}", *overrides])
    records = Recipe(cfg).test_sets()["gsm8k"]
    prompts = [EVAL_TEMPLATE.format(query=question_of("gsm8k", r)) for r in records]
    prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    outputs, seconds = {}, {}
    for what, run in (("batch-1 loop", lambda: batch_one_loop(model, tokenizer, prompts, 1, max_new_tokens)),
                      ("harness", lambda: generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size))):
        start = time.perf_counter()
        outputs[what] = run()
        seconds[what] = time.perf_counter() - start
    new = {what: sum(len(tokenizer(d)["input_ids"]) for d in decoded) - prompt_tokens for what, decoded in outputs.items()}
    per_s = {what: new[what] / seconds[what] for what in seconds}
    return {"problems": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seconds": seconds,
            "new_tokens": new, "new_tokens_per_s": per_s, "ratio": per_s["harness"] / per_s["batch-1 loop"],
            "identical": sum(a == b for a, b in zip(outputs["batch-1 loop"], outputs["harness"]))}


if __name__ == "__main__":
    main()
