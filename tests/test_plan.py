"""The planner (harness.plan): its memory model against measured steps (this CPU's, and the README's H100 table),
its parts, the fixes it proposes, the GPU specs, and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from harness.config import compose
from harness.plan.memory import Batch, estimate

MIB = 2**20
ALL_LINEAR = "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


def test_every_gpu_of_the_issue_has_a_spec_and_result_mfu_reads_them():
    from harness.gpus import known
    from harness.throughput import peak_flops

    names = {g.name for g in known()}
    assert {"h100-80gb", "h200", "a100-80gb", "a100-40gb", "l40s", "a10g", "rtx-4090"} <= names
    assert all(g.memory_mib > 10_000 and g.bf16_tflops > 50 and g.memory_tb_s > 0.3 for g in known())
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_flops("Tesla T4") is None and peak_flops(None) is None


def test_the_parts_are_the_parameters_in_their_dtypes():
    """On a GPU a LoRA cell holds bf16 frozen weights and fp32 adapters with two fp32 moments; full fine-tuning
    holds everything in fp32 (its master weights); the activations grow with the micro-batch's tokens."""
    lora = compose(["model=tiny-llama", "model.dtype=auto", "method=lora", "method.r=8"])  # (tiny-llama says fp32)
    small, large = estimate(lora, Batch(1, 64, 2, True)), estimate(lora, Batch(1, 256, 2, True))
    assert small.frozen_weights == 2 * small.frozen and small.weights_dtype == "bfloat16"
    steps = 4 * 20  # AdamW's step counter: a float32 scalar per trained tensor (2 layers x 5 modules x A, B)
    assert small.trainable_weights == 4 * small.trainable and small.optimizer == 8 * small.trainable + steps
    assert small.compute == "bf16" and large.activations > 3 * small.activations
    full = estimate(compose(["model=tiny-llama", "method=full"]), Batch(1, 64, 2, True))
    assert full.frozen_weights == 0 and full.trainable_weights == 4 * full.trainable
    assert 0 < full.optimizer - 2 * full.trainable_weights < 4 * 100
    on_cpu = estimate(lora, Batch(1, 64, 2, True), device="cpu")
    assert on_cpu.frozen_weights == 4 * on_cpu.frozen and on_cpu.compute == "no"


def test_rosa_plans_its_sparse_part_at_its_density():
    """RoSA's masks come from gradients at run time; the plan gives each target its floor(d x numel) entries:
    values (trained, with moments) and the index buffers."""
    cfg = compose(["model=tiny-llama", "method=rosa", "method.r=2", "method.density=0.05"])
    plain = estimate(compose(["model=tiny-llama", "method=lora", "method.r=2", "method.alpha=4",
                              f"method.dropout={cfg.method.dropout}",
                              f"model.target_modules={list(cfg.method.target_modules or cfg.model.target_modules)}"]),
                     Batch(1, 64, 2, True))
    rosa = estimate(cfg, Batch(1, 64, 2, True))
    # tiny-llama: 2 layers of q,k,v,up,down at hidden 64, intermediate 128, 2 key-value heads of 16
    shapes = [(64, 64), (32, 64), (32, 64), (128, 64), (64, 128)] * 2
    nnz = sum(int(0.05 * o * i) for o, i in shapes)
    assert rosa.trainable - plain.trainable == nnz
    assert rosa.buffers - plain.buffers >= 3 * 8 * nnz


def test_the_planned_sparse_part_saves_what_the_real_one_saves():
    from harness.methods.sparse import PlannedSparseDelta, SparseDelta, topk_mask

    torch.manual_seed(0)
    rows, cols = topk_mask(torch.rand(48, 80), 0.1)
    real, planned = SparseDelta(48, 80, rows, cols), PlannedSparseDelta(48, 80, rows.numel())
    assert [(n, b.shape) for n, b in real.named_buffers()] == [(n, b.shape) for n, b in planned.named_buffers()]
    assert real.values.shape == planned.values.shape

    def saved_bytes(module):
        total = []
        x = torch.randn(2, 7, 80, dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            out = module(x)
        out.float().sum().backward()
        return sum(total), out.shape, out.dtype, x.grad.shape

    assert saved_bytes(real) == saved_bytes(planned)


def test_neat_under_autocast_computes_the_same_product_without_the_fp32_copy():
    """bf16 -> fp32 -> bf16 is exact, so leaving the bf16 weight as it is under autocast gives the product bit for
    bit; outside autocast the weight still meets the adapter in the adapter's dtype."""
    from harness.methods.neat import _as_adapter_dtype

    torch.manual_seed(0)
    weight, a = torch.randn(64, 32).to(torch.bfloat16), torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = weight.to(a.dtype) @ a.t()
        assert _as_adapter_dtype(weight, a) is weight
        assert torch.equal(_as_adapter_dtype(weight, a) @ a.t(), before)
    assert _as_adapter_dtype(weight, a).dtype == torch.float32


@pytest.mark.slow
def test_predicted_peak_matches_a_measured_cpu_step_on_tiny_llama():
    """The planner's peak against the resident-set peak of the same step measured in a child process (within
    20%, the issue's bound; it lands within ~2% here)."""
    from harness.plan.check import compare

    rosa = ["method=rosa", "method.r=2", "method.density=0.05", "method.mask_warmup_steps=0", "method.mask_grad_batches=1"]
    for overrides in (["method=lora"], ["method=full"], rosa):
        row = compare(["model=tiny-llama", *overrides])
        assert 0.8 <= row["ratio"] <= 1.2, (overrides, row["predicted"] / MIB, row["measured"] / MIB)


@pytest.mark.slow
def test_predicted_peak_matches_a_measured_cpu_step_on_smollm2():
    """(DoRA, Neat, RoSA, SpA, full FT, checkpointing on SmolLM2: docs/scale.md, by `python -m harness.plan.check`)"""
    from harness.plan.check import compare

    row = compare(["model=smollm2-135m", "method=lora"])
    assert 0.8 <= row["ratio"] <= 1.2, (row["predicted"] / MIB, row["measured"] / MIB)


# The README's H100 table (docs/scale.md: LLaMA-2-7B shapes, random weights, bf16 autocast, micro-batch 4 of 72
# tokens padded, CUDA max_memory_allocated in MiB), measured before packed batches and Neat's factored forward:
# Neat's row (peft's dense delta weight) is not the code that runs now and is left out.
H100_TABLE = [
    (["method=lora", "method.r=33", ALL_LINEAR], 17_124),
    (["method=rosa", "method.r=16", "budget.fraction=0.011872227", ALL_LINEAR], 19_736),
    (["method=spa", "budget.fraction=0.011872227", ALL_LINEAR], 19_237),
    (["method=lora", "method.r=32"], 16_489),
    (["method=dora", "method.r=32"], 26_860),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,measured_mib", H100_TABLE, ids=["lora-r33", "rosa", "spa", "lora-r32", "dora"])
def test_predicted_peak_matches_the_readme_h100_table(overrides, measured_mib):
    cfg = compose(["profile=mini", "model=llama2-7b-random", *overrides])
    predicted = estimate(cfg, Batch(4, 72, 4, packed=False)).total / MIB
    assert abs(predicted / measured_mib - 1) <= 0.15, (predicted, measured_mib)


def test_plan_cli_prints_the_cells_and_proposes_the_smallest_fix(cli_in_process, tmp_path):
    """Table 2's mini grid on tiny-llama, on a GPU just too small for its full fine-tuning cell: the plan names
    each cell, the LoRA cells fit, the full fine-tuning cell gets the change that makes it fit (a smaller
    micro-batch); the JSON holds the same numbers as the table."""
    from harness.plan.__main__ import main
    from harness.plan.experiment import plan

    grid = ["experiment=table2", "profile=mini", "model=tiny-llama", "gpu=rtx-4090"]
    roomy = plan(grid)
    full, lora = roomy.cells[0].fit.per_gpu, roomy.cells[1].fit.per_gpu
    assert roomy.cells[0].method == "Full FT" and full > lora and all(c.fit.fits for c in roomy.cells)
    memory_mib = int((full + lora) / 2 / 0.92 / MIB)  # usable (meta.plan.headroom 0.08): between the two peaks
    out = tmp_path / "plan.json"
    status, stdout, stderr = cli_in_process(main, [*grid, f"meta.gpu.memory_mib={memory_mib}", f"meta.plan.json={out}",
                                                   "meta.plan.mfu=0.3"])
    assert status == 0, stderr
    result = json.loads(out.read_text())
    assert [c["method"].split()[0] for c in result["cells"]] == ["Full", "LoRA", "PiSSA", "MiLoRA"]
    cell = result["cells"][0]
    assert not cell["fits"] and cell["fix"] == "training.micro_batch_size=2" and cell["gpus"] == 1
    assert cell["per_gpu_bytes"] <= memory_mib * MIB * 0.92 < full
    assert all(c["fits"] and c["fix"] is None for c in result["cells"][1:])
    assert result["mfu"] == 0.3 and result["gpu_hours"] > 0 and result["wall_hours"] > 0
    assert "| Full FT" in stdout and "GPU-hours" in stdout and "with training.micro_batch_size=2" in stdout
    assert cell["work"]["train_tokens"] > 0 and cell["work"]["generated_tokens"] > 0


def test_plan_without_a_gpu_or_with_a_bad_one_is_a_one_line_error(cli_in_process):
    from harness.plan.__main__ import main

    for args, says in ((["experiment=table2", "profile=mini"], "one of a100-40gb, a100-80gb, a10g, h100-80gb"),
                       (["experiment=table2", "profile=mini", "gpu=h900"], "Could not find 'gpu/h900'"),
                       (["experiment=table2", "profile=mini", "gpu=h200", "meta.gpus=0"], "meta.gpus=0 must be a positive"),
                       (["experiment=table2", "profile=mini", "gpu=h200", "meta.plan.mfu=40"], "meta.plan.mfu=40 must be a share")):
        status, stdout, stderr = cli_in_process(main, args)
        assert status == 2 and says in stderr and "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_the_schedule_packs_runs_onto_the_gpus():
    from harness.plan.cost import schedule

    assert schedule([(2.0, 1)] * 4, 2) == 4.0
    assert schedule([(3.0, 1), (1.0, 1), (1.0, 1), (1.0, 1)], 2) == 3.0
    assert schedule([(1.0, 4), (1.0, 1)], 4) == 2.0


# the heads and methods beyond a causal LM's: GLUE's classifiers with ReFT (its forward reads the batch's lengths:
# noted, not traced), the image sets, Neat's depth and module variants. (All twelve experiments plan here in ~3 min;
# milora_instruct's mini data is a hub dataset, for which the planner says so in one line.)
PLANNED = ["table3", "table4", "neat_depth", "neat_modules"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", PLANNED)
def test_every_kind_of_experiment_is_planned(experiment):
    """A row per cell with its parts and hours."""
    from harness.plan.experiment import plan

    result = plan([f"experiment={experiment}", "profile=mini", "gpu=h200"])
    assert result.cells and all(c.fit.memory.frozen_weights + c.fit.memory.trainable_weights > 0 for c in result.cells)
    assert all(c.fit.memory.activations > 0 or c.fit.memory.untraced for c in result.cells)
    assert all(c.work.train_tokens > 0 and c.hours.total > 0 for c in result.cells)


def test_the_mfu_comes_from_the_results_made_on_that_gpu(tmp_path):
    """A result records its GPU under run.environment and its MFU under train.throughput: the plan's default MFU is
    the median of that GPU type's finished results (an A100's and a failed one's are not counted)."""
    from harness.gpus import known
    from harness.plan.cost import measured_mfu
    from harness.results import result_path, write_result

    def result(rid, gpu, mfu, status="finished"):
        ended = {"eval": {"metrics": {}}} if status == "finished" else {"failure": {"phase": "train", "error": "x"}}
        write_result(result_path(tmp_path, rid), {"status": status, "run": {"id": rid, "environment": {"gpu": gpu}},
                                                   "train": {"throughput": {"mfu": mfu}}, **ended})

    result("a", "NVIDIA H100 80GB HBM3", 0.30)
    result("b", "NVIDIA H100 80GB HBM3", 0.42)
    result("c", "NVIDIA H100 80GB HBM3", 0.40)
    result("d", "NVIDIA A100-SXM4-80GB", 0.55)
    result("e", "NVIDIA H100 80GB HBM3", 0.99, status="failed")
    h100 = next(g for g in known() if g.name == "h100-80gb")
    assert measured_mfu(str(tmp_path), h100) == (0.40, 3)
