"""The math protocol `math_greedy` (SPEC 2.3): MetaMath's evaluation prompt, greedy decoding that stops at
`protocol.stop_strings`, the answer after the last "The answer is: " (`answers`)."""

from __future__ import annotations

from harness.benchmarks.base import Scorer
from harness.benchmarks.math.answers import SET_SCORERS, cut_at_stop
from harness.benchmarks.math.data import question_of
from harness.errors import ConfigError
from harness.generation import generate

# MetaMath's evaluation prompt, as MiLoRA's inference scripts use it (training puts the response right after
# "### Response:"; evaluation adds " Let's think step by step.").
EVAL_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{query}\n\n### Response: Let's think step by step.")


def _continuation(decoded: str) -> str:
    """What the model wrote after the prompt's "### Response: Let's think step by step."."""
    response = decoded.split("### Response:", 1)[1] if "### Response:" in decoded else ""
    return response.removeprefix(" Let's think step by step.")


class MathGreedy(Scorer):
    """Greedy decoding under one of the two evaluation set-ups (the protocol config): MetaMath's (`math_greedy`)
    or MiLoRA's (`math_milora`), which differ in new tokens, stop strings and GSM8K's numeric fallback."""

    engines = ("hf", "vllm")  # greedy generate / sample only (harness.engine)

    # 2: MATH's is_equiv compares the raw answers where MetaMath's normalisation fails (a non-integer a/b)
    behaviour_version = 2

    def __init__(self, name: str):
        self.name = name

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        if name not in SET_SCORERS:
            raise ConfigError(f"the math protocol scores {sorted(SET_SCORERS)}, not {name!r}")
        prompts = [EVAL_TEMPLATE.format(query=question_of(name, r)) for r in records]
        max_new_tokens = int((protocol.get("max_new_tokens_per_set") or {}).get(name) or protocol["max_new_tokens"])
        stops = list(protocol.get("stop_strings") or [])
        decoded = generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=max_new_tokens,
                           batch_size=int(protocol["batch_size"]), progress=progress, desc=f"eval {name}",
                           stop_strings=stops)
        return SET_SCORERS[name](records, [cut_at_stop(_continuation(d), stops) for d in decoded],
                                 numeric_fallback=bool(protocol.get("numeric_fallback", False)))
