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
tokens per second of each. `--vllm` adds vLLM's columns (protocol.engine=vllm's worker, `make setup-vllm`): its
`LLM.beam_search` on the commonsense records (no protocol uses it: commonsense's 4 beams stay on HF) and its
greedy GSM8K, each timed without the worker's start (reported apart: imports, weights, warm-up), with how many
answers and outputs are the harness's. `--json PATH` writes every number.

    .venv/bin/python experiments/eval_throughput.py --math 32 --math-tokens 128 --vllm --sets boolq --per-set 8
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--vllm", action="store_true", help="vLLM's worker too: its beam search and greedy GSM8K "
                        "(make setup-vllm)")
    parser.add_argument("--json", help="also write the numbers to this file (JSON)")
    args = parser.parse_intermixed_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from harness.config import compose
    from harness.engine import served_by_vllm
    from harness.recipe import Recipe

    torch.set_num_threads(int(os.environ.get("HARNESS_THREADS", torch.get_num_threads())))
    sets = args.sets.split(",")
    cfg = compose(["profile=mini", "task=commonsense", "protocol=paper_gen", f"task.datasets=[{','.join(sets)}]",
                   f"task.test_subset={args.per_set}", *args.overrides])
    recipe = Recipe(cfg)
    torch.manual_seed(0)
    model, tokenizer = recipe.load(seeded=False)
    model.eval()
    test_sets = recipe.test_sets()
    beams, new_tokens = int(cfg.protocol.num_beams), int(cfg.protocol.max_new_tokens)
    batch_size = args.batch_size or int(cfg.protocol.batch_size)

    with (served_by_vllm(model, tokenizer, cfg.meta.vllm) if args.vllm else contextlib.nullcontext((None, None))) \
            as (served, engine):  # one vLLM worker for both parts; its start is reported apart
        report = measure(args, cfg, model, tokenizer, test_sets, beams, new_tokens, batch_size, served, engine)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def measure(args, cfg, model, tokenizer, test_sets, beams, new_tokens, batch_size, served, engine) -> dict:
    """Both parts, printed as they end: the commonsense beam search, then (`--math`) greedy GSM8K."""
    import torch

    from harness.benchmarks.commonsense.paper_gen import score
    from harness.benchmarks.commonsense.prompts import eval_prompt
    from harness.generation import generate

    from harness.recipe import Recipe

    placement = Recipe(cfg).placement
    timings = {"batch-1 loop": 0.0, "batched": 0.0, "harness": 0.0, **({"vllm": 0.0} if served else {})}
    agree = responses_agree = total = vllm_agree = vllm_responses = 0
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
        if served:  # vLLM's LLM.beam_search, the same width and new tokens
            start = time.perf_counter()
            through_vllm = generate(served, tokenizer, prompts, num_beams=beams, max_new_tokens=new_tokens,
                                    batch_size=batch_size)
            timings["vllm"] += time.perf_counter() - start
            _, vllm_rows = score(name, records, through_vllm)
        _, ref_rows = score(name, records, reference)
        _, our_rows = score(name, records, ours)
        if served:
            vllm_agree += sum(a["prediction"] == b["prediction"] for a, b in zip(our_rows, vllm_rows))
            vllm_responses += sum(a["response"] == b["response"] for a, b in zip(our_rows, vllm_rows))
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
    if served:
        print(f"vllm {engine['version']} beam search (start {engine['start_seconds']:.1f} s apart): "
              f"{timings['harness'] / timings['vllm']:.2f}x the harness's speed; answers the harness's "
              f"{vllm_agree}/{total}, whole responses {vllm_responses}/{total}")
    for name, i, a, b in disagreements[:20]:
        print(f"  {name}[{i}]: batch-1 {a!r} | harness {b!r}")
    report = {"model": cfg.model.name, "device": placement.device, "compute": placement.compute,
              "commonsense": {"records": total, "beams": beams, "new_tokens": new_tokens, "batch_size": batch_size,
                              "seconds": timings, "records_per_s": {k: total / v for k, v in timings.items()},
                              "answers_agree": agree, "responses_agree": responses_agree}}
    if served:
        report["commonsense"]["vllm"] = {"version": engine["version"], "start_seconds": engine["start_seconds"],
                                         "answers_agree_with_harness": vllm_agree,
                                         "responses_agree_with_harness": vllm_responses}
    if args.math:
        with autocast:
            report["math_greedy"] = math_greedy(model, tokenizer, args.overrides, args.math, args.math_tokens, batch_size,
                                                served, engine)
        m = report["math_greedy"]
        print(f"math greedy ({m['problems']} GSM8K problems, at most {m['max_new_tokens']} new tokens): batch-1 loop "
              f"{m['new_tokens_per_s']['batch-1 loop']:.1f} new tokens/s, harness {m['new_tokens_per_s']['harness']:.1f} "
              f"({m['ratio']:.2f}x); outputs identical {m['identical']}/{m['problems']}")
        if "vllm" in m:
            v = m["vllm"]
            print(f"vllm {v['version']}: {m['new_tokens_per_s']['vllm']:.1f} new tokens/s ({v['ratio_to_harness']:.2f}x "
                  f"the harness's batches), its start {v['start_seconds']:.1f} s apart; outputs the harness's "
                  f"{v['identical_to_harness']}/{m['problems']}")
    return report


def math_greedy(model, tokenizer, overrides, problems: int, max_new_tokens: int, batch_size: int,
                served=None, engine: dict | None = None) -> dict:
    """MetaMath's greedy GSM8K set-up: the batch-1 loop, the harness's batches (and vLLM's worker `served`, whose
    record is `engine`), new tokens per second."""
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
    runs = [("batch-1 loop", lambda: batch_one_loop(model, tokenizer, prompts, 1, max_new_tokens)),
            ("harness", lambda: generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size))]
    if served is not None:  # the same call as the harness's: generation.generate hands it to the worker
        runs.append(("vllm", lambda: generate(served, tokenizer, prompts, num_beams=1,
                                              max_new_tokens=max_new_tokens, batch_size=batch_size)))
    for what, run in runs:
        start = time.perf_counter()
        outputs[what] = run()
        seconds[what] = time.perf_counter() - start
    new = {what: sum(len(tokenizer(d)["input_ids"]) for d in decoded) - prompt_tokens for what, decoded in outputs.items()}
    per_s = {what: new[what] / seconds[what] for what in seconds}
    report = {"problems": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "seconds": seconds, "new_tokens": new, "new_tokens_per_s": per_s,
              "ratio": per_s["harness"] / per_s["batch-1 loop"],
              "identical": sum(a == b for a, b in zip(outputs["batch-1 loop"], outputs["harness"]))}
    if engine:
        report["vllm"] = {"version": engine["version"], "start_seconds": engine["start_seconds"],
                          "ratio_to_harness": per_s["vllm"] / per_s["harness"],
                          "identical_to_harness": sum(a == b for a, b in zip(outputs["harness"], outputs["vllm"]))}
    return report


if __name__ == "__main__":
    main()
