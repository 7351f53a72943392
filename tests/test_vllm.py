"""vLLM as the engine (protocol.engine=vllm) against HF generate, on SmolLM2-135M's real weights on this CPU:
greedy GSM8K answers on 20 problems, and a LoRA adapter served through vLLM's LoRA support against the same
adapter merged. One worker serves both (the base weights without the adapter for GSM8K: a worker start is ~30 s
here). They need vLLM's environment (`make setup-vllm`, part of `make setup`) and skip with the reason where it
is absent. PiSSA's served folder (residual weights, plain adapter) is checked without vLLM in test_engine.py."""

import copy

import pytest
import torch

from harness.config import compose
from harness.engine import agreement, served_by_vllm
from harness.engine.vllm import EngineError, worker_python
from harness.generation import generate
from harness.recipe import Recipe

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]  # one worker process: one vLLM start

SMOLLM2_GSM8K = ["profile=mini", "task=gsm8k", "protocol=math_greedy", "model=smollm2-135m"]
PROMPTS = ["Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
           "The capital of France is", "def fibonacci(n):", "A short story about a dragon:"]


@pytest.fixture(scope="module")
def served_lora():
    """(the worker serving SmolLM2 with a LoRA r=8 adapter whose B is not zero, the adapted model, tokenizer,
    its recipe, the engine's record)."""
    cfg = compose([*SMOLLM2_GSM8K, "method=lora", "method.r=8"])
    try:
        worker_python(cfg.meta.vllm)
    except EngineError as missing:
        pytest.skip(f"{missing} (`make setup-vllm` installs it)")
    recipe = Recipe(cfg)
    model, tokenizer = recipe.load(seeded=False)
    adapted = recipe.adapt(model)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter's B is not zero: give it weights that change what the model says
        for name, parameter in adapted.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    adapted.model.eval()
    write_adapter = lambda folder: adapted.method.served_adapter(adapted, tokenizer, folder)  # noqa: E731
    with served_by_vllm(adapted.model, tokenizer, cfg.meta.vllm, write_adapter=write_adapter) as (served, record):
        yield served, adapted, tokenizer, recipe, record


def test_smollm2_greedy_gsm8k_answers_through_vllm_are_hfs_on_20_problems(served_lora, data_dir):
    served, adapted, tokenizer, _, record = served_lora
    cfg = compose([*SMOLLM2_GSM8K, "task.test_subset=20", "protocol.max_new_tokens=64"])
    recipe = Recipe(cfg)
    test_sets = recipe.test_sets()
    _, rows = recipe.scorer.score_set(served.base(), tokenizer, "gsm8k", test_sets["gsm8k"], cfg.protocol, cfg.task)
    with adapted.model.disable_adapter():  # HF generate on the same base weights
        compared = agreement.compare(recipe.scorer, adapted.model, tokenizer, test_sets, {"gsm8k": rows},
                                     cfg.protocol, cfg.task, records=20, threshold=0.9)
    differ = compared["sets"]["gsm8k"]["disagreements"]
    print(f"vLLM {record['version']} vs HF generate: answers {compared['same_answers']}/20, texts "
          f"{compared['sets']['gsm8k']['same_texts']}/20, differing records {differ}")
    assert compared["records"] == 20 and compared["rate"] >= 0.9, f"answers differ on records {differ}"


def test_a_lora_adapter_served_by_vllm_generates_as_the_same_adapter_merged(served_lora):
    served, adapted, tokenizer, _, record = served_lora
    assert record["served"] == "LoRA adapter, rank 8" and record["name"] == "vllm" and record["version"]
    through_vllm = generate(served, tokenizer, PROMPTS, num_beams=1, max_new_tokens=24, batch_size=4)
    without = generate(served.base(), tokenizer, PROMPTS, num_beams=1, max_new_tokens=24, batch_size=4)
    merged = copy.deepcopy(adapted.model).merge_and_unload()  # the fixture's model stays unmerged
    through_hf = generate(merged.eval(), tokenizer, PROMPTS, num_beams=1, max_new_tokens=24, batch_size=4)
    assert through_vllm != without, "vLLM generated as the base model: the adapter was not applied"
    same = sum(a == b for a, b in zip(through_vllm, through_hf))
    print(f"vLLM's LoRA vs the adapter merged (HF generate): {same}/4 texts identical, "
          f"{sum(a != b for a, b in zip(through_vllm, without))}/4 differ from the base model's")
    assert same >= 3, f"vLLM's LoRA {through_vllm} | merged {through_hf}"


def test_lm_evals_generative_tasks_decode_through_vllm_as_through_hf(served_lora, data_dir):
    """protocol=lmeval's GSM8K (lm-eval's generate_until: its stop strings, its extraction): HFLM's requests with
    vLLM's decoding (harness.engine.served_lm) against HFLM's own, on the first 10 problems."""
    served, adapted, tokenizer, _, _ = served_lora
    cfg = compose([*SMOLLM2_GSM8K, "protocol=lmeval", "task.test_subset=10", "protocol.max_gen_toks=64"])
    scorer = Recipe(cfg).scorer
    with adapted.model.disable_adapter():  # the HF model lm-eval holds is the same base weights
        metrics, rows = scorer.evaluate(served.base(), tokenizer, {}, cfg.protocol, cfg.task, False)
        compared = agreement.compare(scorer, adapted.model, tokenizer, {}, rows, cfg.protocol, cfg.task,
                                     records=10, threshold=0.9)
    assert metrics["gsm8k"]["n"] == 10 and compared["records"] == 10
    print(f"lm-eval GSM8K through vLLM vs HFLM: verdicts {compared['same_answers']}/10, extracted answers "
          f"{compared['sets']['gsm8k']['same_texts']}/10")
    assert compared["rate"] >= 0.9 and compared["sets"]["gsm8k"]["same_texts"] >= 9
